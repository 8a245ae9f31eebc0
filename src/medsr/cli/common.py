"""What every command shares."""

from __future__ import annotations

import sys

PLAIN_EVERY = 30.0  # seconds between progress lines where no terminal shows a bar (nohup, Slurm logs)


class Progress:
    """Progress of the item under way (tiles of an image, slices of a volume): a bar on a terminal,
    else a plain line at most every ``PLAIN_EVERY`` seconds with the rate and the time left."""

    def __init__(self) -> None:
        self.bar = None
        self.item: object = None
        self.started = self.said = 0.0

    def __call__(self, item: object, name: str, unit: str, done: int, total: int) -> None:
        import time

        from tqdm import tqdm

        now = time.monotonic()
        if item != self.item:
            self.close()
            self.item, self.started, self.said = item, now, now
            if sys.stderr.isatty():
                self.bar = tqdm(desc=name, total=total, unit=unit, leave=False)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif now - self.said >= PLAIN_EVERY or (done == total and now - self.started >= PLAIN_EVERY):
            self.said = now
            rate = done / max(now - self.started, 1e-9)
            left = (total - done) / rate if rate > 0 else float("inf")
            print(f"{name}: {done}/{total} {unit}s, {rate:.2f} {unit}s/s, about {left:.0f} s left", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.item = None, None


def add_threads_option(parser) -> None:
    """``--threads N``, the same for every command that computes (``fit_threads`` reads it)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU compute threads (default: the CPUs this process may use -- its affinity and its "
                             "cgroup's CPU quota -- less those other processes keep busy, unless OMP_NUM_THREADS "
                             "says)")


def error(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)


def ranks_and_device(device: str):
    """torch.distributed under torchrun with several processes (gloo: it only gathers results; each
    rank works alone), else None; and this rank's device."""
    from medsr.engine.devices import join_process_group, rank_device

    _, size = join_process_group("gloo")
    import torch.distributed

    return (torch.distributed if size > 1 else None), rank_device(device, size)
