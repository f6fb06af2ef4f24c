"""The compute resource: which device and how many threads the method uses, its batch sizes, and where the
per-batch work runs (this process, or a Ray cluster)."""

import os
from collections.abc import Sequence

import dagster as dg
from pydantic import Field, PrivateAttr

from instruct_lf_dagster.core.compatibility import Encode
from instruct_lf_dagster.core.config import ComputeConfig
from instruct_lf_dagster.core.corex import CorexStatistics
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.resources import distributed


class ComputeResource(dg.ConfigurableResource):
    """Device, threads and batch sizes handed to the core (CPU locally, CUDA in production when present)."""

    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu' or 'cuda[:N]'")
    threads: int = Field(default=0, description="CPU threads for torch; 0 = every core")
    encode_batch_size: int = Field(
        default=ComputeConfig().encode_batch_size, description="texts per encoder forward pass"
    )
    train_mini_batch_size: int = Field(
        default=0,
        description="texts embedded at once with gradients while fine-tuning; 0: 8 on CPU, 64 on CUDA",
    )
    ray_address: str = Field(
        default="",
        description="where the per-batch work runs: '' this process; 'local' a Ray cluster started here on "
        "'threads' CPUs; else a Ray cluster's address ('host:6379' on a node of it, 'ray://host:10001', 'auto')",
    )
    ray_cpus_per_actor: int = Field(
        default=1, description="CPUs (and torch threads) per encoder actor without GPUs"
    )

    _ray_connected: bool = PrivateAttr(default=False)

    def torch_device(self) -> str:
        """The device to run on, resolving 'auto'."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1

    def config(self) -> ComputeConfig:
        """The method's compute settings: device, threads, batch sizes."""
        device = self.torch_device()
        return ComputeConfig(
            device=device,
            threads=self.thread_count(),
            encode_batch_size=self.encode_batch_size,
            # 8 keeps a CPU's peak memory low; a GPU is faster with larger chunks
            train_mini_batch_size=self.train_mini_batch_size
            or (ComputeConfig().train_mini_batch_size if device == "cpu" else 64),
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import torch

        torch.set_num_threads(self.thread_count())
        if self.ray_address not in ("", "local", "auto"):
            distributed.reachable(self.ray_address)  # fail the step now, naming the address, not mid-batch

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Leave the Ray cluster, if this resource joined it (a cluster it started stops)."""
        if self._ray_connected:
            distributed.disconnect()
            self._ray_connected = False

    def _on_ray(self) -> bool:
        """Whether the per-batch work goes to Ray; connects on first use (steps that never need it never do)."""
        if self.ray_address and not self._ray_connected:
            self._ray_connected = distributed.connect(self.ray_address, self.thread_count())
        return bool(self.ray_address)

    def document_encoder(self, linker: Linker) -> Encode | None:
        """What encodes documents with `linker`: an actor pool on Ray, or None (the linker, in this process)."""
        if not self._on_ray():
            return None

        def encode(texts: list[str]):
            return distributed.encode(
                linker, texts, batch_size=self.encode_batch_size, cpus_per_actor=self.ray_cpus_per_actor
            )

        return encode

    def statistics(self, keys: Sequence[str], read: distributed.ReadRows, p: int) -> CorexStatistics:
        """Linear CorEx statistics of the compatibility rows of every batch in `keys` (`read(key)` gives a
        batch's rows), each batch's computed apart and summed in key order: by Ray tasks, or here."""
        if self._on_ray():
            return distributed.statistics(keys, read, p)
        return distributed.batch_statistics_here(keys, read, p)
