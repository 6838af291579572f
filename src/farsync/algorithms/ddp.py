"""`ddp`: synchronous data parallelism (the baseline).

Update, every step t on every worker i::

    g     = (1/n) * sum_i grad f_i(theta; batch_i)       # all_reduce(mean) of one flat buffer
    theta = InnerOpt.step(theta, g)

Bytes per step per worker (ring all-reduce): 2(n-1)/n * d * bytes_per_element. Gradient
clipping, if set, applies to the averaged gradient (as in torch DDP). Parameters whose ``.grad``
is None contribute zeros. Buffers (BatchNorm statistics): rank 0's are broadcast after every
step, as torch DDP's ``broadcast_buffers`` (`replicas.py`). A step whose synchronization is not
committed (torchft: a peer failed during it) is skipped.
"""

from __future__ import annotations

import torch

from .base import CollectiveAlgorithm


class DDP(CollectiveAlgorithm):
    grad_scaler_ok = True  # .grad is read only by the inner optimizer step (fp16: microbatch.py)
    one_worker_is_inner = True
    name = "ddp"
    summary = "all-reduce of gradients every step (baseline)"

    @classmethod
    def declared_calls(cls, model, steps, degree, options):
        """One all-reduce of the gradients per step."""
        b = cls._plain_payload(model, options)
        return None if b is None or any(True for _ in model.buffers()) else [("all_reduce", b)] * steps

    def _step(self) -> None:
        self.comm.begin_sync()  # torchft: the quorum; a replica coming back heals here
        self._average_gradients()
        if self._closure is not None:  # a same-batch closure (AdGD) must see the global gradient too
            local = self._closure

            def averaged() -> torch.Tensor:
                loss = local()
                self._average_gradients()
                return loss

            self._closure = averaged
        if not self.comm.commit():  # torchft: a peer failed during the round; this step is skipped
            return
        self._optimizer_step()
        self.buffers.broadcast_from_rank0()
