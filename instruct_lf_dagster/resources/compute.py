"""The compute resource: which device and how many threads the method uses, and its batch sizes."""

import os

import dagster as dg
from pydantic import Field


class ComputeResource(dg.ConfigurableResource):
    """Device, threads and batch sizes handed to the core (CPU locally, CUDA in production when present)."""

    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu' or 'cuda[:N]'")
    threads: int = Field(default=0, description="CPU threads for torch; 0 = every core")
    encode_batch_size: int = Field(default=64, description="texts per encoder forward pass")
    train_mini_batch_size: int = Field(
        default=0,
        description="texts embedded at once with gradients while fine-tuning; 0: 8 on CPU, 64 on CUDA",
    )

    def torch_device(self) -> str:
        """The device to run on, resolving 'auto'."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1

    def settings(self) -> dict:
        """The method's compute settings (`InstructLF` fields): device, threads, batch sizes."""
        device = self.torch_device()
        return {
            "device": device,
            "threads": self.thread_count(),
            "encode_batch_size": self.encode_batch_size,
            "linker_mini_batch_size": self.train_mini_batch_size or (8 if device == "cpu" else 64),
        }

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import torch

        torch.set_num_threads(self.thread_count())
