//! `osa keys create|revoke|list|webhook-secret`: the gateway's API keys and
//! webhook signing secrets in Redis.

use std::{process::ExitCode, time::Duration};

use osa_gateway::{
    keys::ApiKeys,
    webhook::{WebhookError, WebhookSecrets},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Redis holding the keys (the gateway's).
    #[arg(long, env = "OSA_REDIS_URL", global = true)]
    redis: Option<String>,
    /// Prefix of the Redis keys (as the gateway's `key_prefix`).
    #[arg(long, default_value = "osa:", global = true)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a key for a tenant; prints the key (shown once) on stdout.
    Create {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by its id (see `list`).
    Revoke { id: String },
    /// List keys (ids, tenants, creation times; never the keys).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print the tenant's webhook signing secret (created on first use);
    /// `--rotate` replaces it first.
    WebhookSecret {
        #[arg(long)]
        tenant: String,
        /// Replace the secret with a new one (webhooks are signed with the
        /// new one from then on).
        #[arg(long)]
        rotate: bool,
    },
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(url) = &args.redis else {
        return super::usage("keys", "--redis URL (or OSA_REDIS_URL) is required");
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let keys = ApiKeys::connect(url, &args.prefix, Duration::from_secs(5)).await?;
        match &args.command {
            Command::Create { tenant } => {
                let (id, key) = match keys.create(tenant).await {
                    Ok(k) => k,
                    Err(e @ osa_gateway::keys::KeyError::BadTenant(_)) => {
                        return super::usage("keys create", e);
                    }
                    Err(e) => return Err(e.into()),
                };
                eprintln!(
                    "created key {id} for tenant {tenant} (store it now: it is not shown again)"
                );
                println!("{key}");
            }
            Command::Revoke { id } => {
                if !keys.revoke(id).await? {
                    eprintln!("osa keys revoke: no key {id:?}");
                    return Ok(ExitCode::FAILURE);
                }
                eprintln!("revoked {id}");
            }
            Command::List { tenant } => {
                for k in keys.list(tenant.as_deref()).await? {
                    println!("{}\t{}\t{}", k.id, k.tenant, k.created_ms);
                }
            }
            Command::WebhookSecret { tenant, rotate } => {
                let secrets =
                    WebhookSecrets::connect(url, &args.prefix, Duration::from_secs(5)).await?;
                let secret = if *rotate {
                    secrets.rotate(tenant).await
                } else {
                    secrets.get_or_create(tenant).await
                };
                let secret = match secret {
                    Ok(s) => s,
                    Err(e @ WebhookError::BadTenant(_)) => {
                        return super::usage("keys webhook-secret", e);
                    }
                    Err(e) => return Err(e.into()),
                };
                if *rotate {
                    eprintln!("rotated the webhook secret of tenant {tenant}");
                }
                println!("{secret}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
