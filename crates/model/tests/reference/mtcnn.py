"""Reference for tests/parity_mtcnn.rs: facenet-pytorch 2.6.0's MTCNN with its
REAL pretrained weights (converted by scripts/convert_mtcnn.py, written as the
fixture's weights file), plus a small reimplementation of EchoMimic v1's
reference crop / face mask (infer_audio2vid.py `select_face` and the
"face musk prepare" block, src/utils/util.py `crop_and_pad`).

io tensors:
- {pnet,rnet,onet}.in / .out*: raw net outputs on fixed random inputs.
- <case>.image (uint8 HWC), <case>.boxes [N,4], <case>.probs [N],
  <case>.points [N,5,2] for the cases astronaut, coffee (no face), twins
  (astronaut tiled twice side by side), edge (face cut by the image corner)
  and small (100x100 downscale).
- crop.*, edge_crop.*: EchoMimic geometry on the selected face.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import skimage.data
from PIL import Image
from facenet_pytorch import MTCNN

import common

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts"))
import convert_mtcnn  # noqa: E402

CROP_SIZE = 64


def detect_case(mtcnn, name, img, io):
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    if boxes is None:
        boxes, probs, points = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    # keep_all returns object arrays of float32 values.
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2)
    io[f"{name}.image"] = torch.from_numpy(np.ascontiguousarray(img))
    io[f"{name}.boxes"] = torch.from_numpy(boxes)
    io[f"{name}.probs"] = torch.from_numpy(probs)
    io[f"{name}.points"] = torch.from_numpy(points)
    print(name, boxes.tolist(), probs.tolist())
    return boxes, probs


# --- EchoMimic v1 (antgroup/echomimic a53e970), reimplemented for the test ---

def select_face(det_bboxes, probs):
    if det_bboxes is None or probs is None:
        return None
    kept = [det_bboxes[i] for i in range(len(det_bboxes)) if probs[i] > 0.8]
    if not kept:
        return None
    return sorted(kept, key=lambda x: (x[3] - x[1]) * (x[2] - x[0]), reverse=True)[0]


def crop_and_pad(image, rect):
    x0, y0, x1, y1 = rect
    h, w = image.shape[:2]
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, x1), min(h, y1)
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    nx0, ny0 = max(0, cx - side // 2), max(0, cy - side // 2)
    nx1, ny1 = min(w, nx0 + side), min(h, ny0 + side)
    if (nx1 - nx0) != (ny1 - ny0):
        side = min(nx1 - nx0, ny1 - ny0)
        nx1, ny1 = nx0 + side, ny0 + side
    return image[ny0:ny1, nx0:nx1], (nx0, ny0, nx1, ny1)


def echomimic_prepare(img, bbox, size, mask_ratio=0.1, crop_ratio=0.5, clip_mask=False):
    """clip_mask=True clips a negative mask start at 0 (osa's documented
    deviation) instead of letting numpy wrap it around."""
    face_mask = np.zeros(img.shape[:2], np.uint8)
    xyxy = np.round(bbox[:4]).astype("int")
    rb, re, cb, ce = xyxy[1], xyxy[3], xyxy[0], xyxy[2]
    r_pad, c_pad = int((re - rb) * mask_ratio), int((ce - cb) * mask_ratio)
    r0, c0 = rb - r_pad, cb - c_pad
    if clip_mask:
        r0, c0 = max(0, r0), max(0, c0)
    face_mask[r0:re + r_pad, c0:ce + c_pad] = 255
    r_pad, c_pad = int((re - rb) * crop_ratio), int((ce - cb) * crop_ratio)
    rect = [max(0, cb - c_pad), max(0, rb - r_pad), min(ce + c_pad, img.shape[1]), min(re + r_pad, img.shape[0])]
    crop, box = crop_and_pad(img, rect)
    mask, _ = crop_and_pad(face_mask, rect)
    return crop, mask, box


def resize_linear(a, size):
    """cv2.resize(INTER_LINEAR)'s half-pixel grid, in float, rounded (cv2 is
    not installed here; see face/crop.rs)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    t = t.permute(2, 0, 1) if t.dim() == 3 else t.unsqueeze(0)
    out = F.interpolate(t.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False).squeeze(0)
    out = out.round().clamp(0, 255).to(torch.uint8)
    return out.permute(1, 2, 0) if a.ndim == 3 else out[0]


def main():
    args = common.parse_args()
    common.seed_all(0)

    mtcnn = MTCNN(keep_all=True, device="cpu")
    io = {}

    # Raw nets on fixed inputs (two batch items each).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.randn(2, 3, 37, 51, generator=g)
        io["pnet.in"] = x
        io["pnet.out_reg"], io["pnet.out_prob"] = mtcnn.pnet(x)
        x = torch.randn(3, 3, 24, 24, generator=g)
        io["rnet.in"] = x
        io["rnet.out_reg"], io["rnet.out_prob"] = mtcnn.rnet(x)
        x = torch.randn(3, 3, 48, 48, generator=g)
        io["onet.in"] = x
        io["onet.out_reg"], io["onet.out_landmarks"], io["onet.out_prob"] = mtcnn.onet(x)

    astronaut = skimage.data.astronaut()
    boxes, probs = detect_case(mtcnn, "astronaut", astronaut, io)
    detect_case(mtcnn, "coffee", skimage.data.coffee(), io)
    detect_case(mtcnn, "twins", np.concatenate([astronaut, astronaut], axis=1), io)
    # A face cut by the top-left corner: boxes reach negative coordinates, so
    # the crops are clipped (`pad`) and EchoMimic's mask slice starts < 0.
    edge = astronaut[70:370, 200:450]
    edge_boxes, edge_probs = detect_case(mtcnn, "edge", edge, io)
    # A 100x100 downscale: a face near the minimum size, few pyramid levels.
    small = np.array(Image.fromarray(astronaut).resize((100, 100), Image.BILINEAR))
    detect_case(mtcnn, "small", small, io)

    bbox = select_face(boxes, probs)
    assert bbox is not None, "the astronaut has a face"
    crop, mask, box = echomimic_prepare(astronaut, bbox, CROP_SIZE)
    io["crop.bbox"] = torch.from_numpy(np.asarray(bbox, dtype=np.float32))
    io["crop.box"] = torch.tensor(box, dtype=torch.int64)
    io["crop.mask_full"] = torch.from_numpy(np.ascontiguousarray(mask))
    io["crop.image_full"] = torch.from_numpy(np.ascontiguousarray(crop))
    io["crop.image"] = resize_linear(crop, CROP_SIZE)
    io["crop.mask"] = resize_linear(mask, CROP_SIZE)
    print("crop box", box)

    bbox = select_face(edge_boxes, edge_probs)
    assert bbox is not None, "the cut face is still found"
    crop, mask, box = echomimic_prepare(edge, bbox, CROP_SIZE, clip_mask=True)
    _, upstream_mask, _ = echomimic_prepare(edge, bbox, CROP_SIZE)
    io["edge_crop.bbox"] = torch.from_numpy(np.asarray(bbox, dtype=np.float32))
    io["edge_crop.box"] = torch.tensor(box, dtype=torch.int64)
    io["edge_crop.mask_full"] = torch.from_numpy(np.ascontiguousarray(mask))
    io["edge_crop.upstream_mask_full"] = torch.from_numpy(np.ascontiguousarray(upstream_mask))
    print("edge crop box", box, "mask px", int((mask > 0).sum()), "upstream mask px", int((upstream_mask > 0).sum()))

    # The weights file is exactly what scripts/convert_mtcnn.py produces.
    common.save(args, convert_mtcnn.merged_state_dict(), io)


if __name__ == "__main__":
    main()
