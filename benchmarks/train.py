"""Training throughput, data-loader throughput, and (on a GPU) how busy the loader keeps it.

Builds a synthetic slice bank (the loader reads it exactly as it reads a real one), then:
1. loader: the training DataLoader alone (memmap reads by worker processes) over one epoch;
2. training: hu2020 forward + backward + Adam step fed by that loader (channels_last as in
   training unless --contiguous, bf16 autocast as `train.amp` gives it: on CUDA and on CPUs that
   compute bf16 natively, unless --fp32), slices per second;
3. compute only: the same steps on one batch already on the device (the upper bound); where bf16
   autocast is on, also in float32, for the speed-up it brings on this machine;
4. on CUDA, the GPU busy fraction during (2): NVML's utilisation (share of time a kernel ran),
   sampled every 50 ms.
Targets: loader >= 10x training throughput; on a GPU at 224x224 batch 24, busy >= 80%.

    python benchmarks/train.py --device cpu --size 64 --width 0.5 --steps 30
    python benchmarks/train.py --device cuda --size 224 --steps 300 --workers 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.train.inference import bf16_autocast  # noqa: E402
from lungcam.train.models import build_model, focal_cross_entropy  # noqa: E402
from lungcam.train.slice_bank import IMAGES_NAME, INDEX_NAME, zscore  # noqa: E402
from lungcam.train.training import DeviceBank, EpochBatches  # noqa: E402


def synthetic_bank(folder: Path, slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(folder / IMAGES_NAME, mode="w+", dtype=np.uint8, shape=(slices, size, size))
    for start in range(0, slices, 512):
        n = min(512, slices - start)
        images[start : start + n] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    images.flush()
    pd.DataFrame({"patient_id": [f"p{i // 50}" for i in range(slices)], "row": range(slices), "cache_slice": 0}).to_csv(
        folder / INDEX_NAME, sep="\t", index=False
    )
    return rng.integers(0, 3, slices)


def loader_for(folder: Path, labels: np.ndarray, batch: int, workers: int, pin: bool, epoch_seed: int = 0):
    rows = np.random.default_rng(epoch_seed).permutation(len(labels))
    batches = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    return torch.utils.data.DataLoader(
        EpochBatches(folder, batches, labels, np.zeros_like(labels)),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )


class Utilisation(threading.Thread):
    """Samples NVML's GPU utilisation every 50 ms until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples, self.running = [], True

    def run(self):
        while self.running:
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.05)


def train_steps(model, optimizer, batches, device, amp, channels_last, limit):
    alpha = torch.ones(3, device=device)
    seen = 0
    for i, (images, labels, _) in enumerate(batches):
        if i >= limit:
            break
        x = zscore(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            scale_logits = model.scale_logits(x)
        loss = torch.stack([focal_cross_entropy(s, y, alpha) for s in scale_logits]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--slices", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--contiguous", action="store_true", help="the default memory layout instead of channels_last")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (train.amp: false)")
    args = parser.parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    amp = bf16_autocast(not args.fp32, device)
    channels_last = not args.contiguous
    print(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    print(
        f"hu2020 width {args.width}, input {args.size}x{args.size}, batch {args.batch}, bf16 autocast: {amp}, channels_last: "
        f"{channels_last}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        labels = synthetic_bank(folder, args.slices, args.size)

        start, seen = time.perf_counter(), 0
        for images, _, _ in loader_for(folder, labels, args.batch, args.workers, cuda):
            seen += len(images)
        loader_rate = seen / (time.perf_counter() - start)

        model = build_model("hu2020", 3, args.width, 0.5).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        warm = max(3, args.steps // 10)
        train_steps(model, optimizer, loader_for(folder, labels, args.batch, 0, False), device, amp, channels_last, warm)
        monitor = Utilisation() if cuda else None
        if monitor:
            monitor.start()
        start = time.perf_counter()
        seen = train_steps(
            model,
            optimizer,
            loader_for(folder, labels, args.batch, args.workers, cuda, epoch_seed=1),
            device,
            amp,
            channels_last,
            args.steps,
        )
        train_rate = seen / (time.perf_counter() - start)
        busy = None
        if monitor:
            monitor.running = False
            monitor.join()
            busy = float(np.mean(monitor.samples[2:])) / 100 if len(monitor.samples) > 4 else None

        resident_rate = resident_train = None
        if cuda:
            images = np.load(folder / IMAGES_NAME, mmap_mode="r")
            resident = DeviceBank(images, labels, np.zeros_like(labels), device)
            rows = np.random.default_rng(2).permutation(len(labels))
            batches = [rows[i : i + args.batch] for i in range(0, len(rows) - args.batch + 1, args.batch)]
            torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
            for images_batch, _, _ in resident.batches(batches):
                seen += len(images_batch)
            torch.cuda.synchronize()
            resident_rate = seen / (time.perf_counter() - start)
            monitor = Utilisation()
            monitor.start()
            start = time.perf_counter()
            seen = train_steps(model, optimizer, resident.batches(batches), device, amp, channels_last, args.steps)
            resident_train = seen / (time.perf_counter() - start)
            monitor.running = False
            monitor.join()
            resident_busy = float(np.mean(monitor.samples[2:])) / 100 if len(monitor.samples) > 4 else None

        fixed = next(iter(loader_for(folder, labels, args.batch, 0, False)))
        start = time.perf_counter()
        seen = train_steps(model, optimizer, [fixed] * args.steps, device, amp, channels_last, args.steps)
        compute_rate = seen / (time.perf_counter() - start)
        fp32_rate = None
        if amp:
            start = time.perf_counter()
            seen = train_steps(model, optimizer, [fixed] * args.steps, device, False, channels_last, args.steps)
            fp32_rate = seen / (time.perf_counter() - start)

    print(f"\ndata loader ({args.workers} workers):      {loader_rate:10.0f} slices/s")
    print(f"training, fed by the loader:       {train_rate:10.1f} slices/s (forward + backward + step)")
    print(f"training, one batch on the device: {compute_rate:10.1f} slices/s (compute only)")
    if fp32_rate is not None:
        print(f"the same in float32:               {fp32_rate:10.1f} slices/s (bf16 autocast {compute_rate / fp32_rate:.2f}x)")
    ratio = loader_rate / train_rate
    print(f"\nloader / training throughput: {ratio:.1f}x (target >= 10x): {'met' if ratio >= 10 else 'NOT met'}")
    if busy is not None:
        print(f"GPU busy while training from the loader: {100 * busy:.0f}% (target >= 80%): {'met' if busy >= 0.8 else 'NOT met'}")
        print(f"loader-fed / compute-only throughput: {train_rate / compute_rate:.2f}")
    if resident_rate is not None:
        print(
            f"\nslice bank in GPU memory (train.bank_on_gpu): batches {resident_rate:.0f} slices/s, "
            f"{resident_rate / resident_train:.0f}x training"
        )
        print(
            f"training from it: {resident_train:.1f} slices/s, GPU busy {100 * resident_busy:.0f}%, {resident_train / compute_rate:.2f} "
            "of compute-only"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
