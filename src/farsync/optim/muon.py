"""`MuonWithAdamW`: torch.optim.Muon for the 2-D hidden weight matrices, AdamW for everything else.

torch.optim.Muon only takes 2-D parameters, and Muon is meant for hidden layers: embeddings and
the output head stay with AdamW (as in the Muon write-up and modded-nanoGPT). Parameters are
routed by name: Muon gets every 2-D parameter whose name does not match one of ``adamw_names``
(default: embedding and head names); AdamW gets the rest. One optimizer object: ``param_groups``
is Muon's groups followed by AdamW's (the same dicts, so LR schedulers and farsync's wrappers
work), ``step``/``zero_grad`` drive both, ``state_dict`` holds both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

DEFAULT_ADAMW_NAMES = ("wte", "wpe", "emb", "lm_head", "head")


def split_for_muon(named_params: Iterable[tuple[str, torch.Tensor]], adamw_names=DEFAULT_ADAMW_NAMES):
    """(Muon parameters, AdamW parameters) of `named_params` (trainable ones only)."""
    muon, adamw = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        hidden = p.ndim == 2 and not any(key in name for key in adamw_names)
        (muon if hidden else adamw).append(p)
    return muon, adamw


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0, adamw: dict[str, Any] | None = None, adamw_names=DEFAULT_ADAMW_NAMES):
        named = list(named_params)
        if not named or not all(isinstance(x, tuple) and len(x) == 2 for x in named):
            raise ValueError("MuonWithAdamW needs named parameters (model.named_parameters()) to route them")
        muon_params, adamw_params = split_for_muon(named, tuple(adamw_names))
        if not muon_params:
            raise ValueError("MuonWithAdamW found no 2-D hidden weight for Muon")
        self.muon = torch.optim.Muon(muon_params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        adamw = {"lr": 3e-3, **(adamw or {})}
        self.adamw = torch.optim.AdamW(adamw_params, **{k: tuple(v) if isinstance(v, list) else v for k, v in adamw.items()}) if adamw_params else None
        groups = self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])
        super().__init__(groups, {})
        self.param_groups = groups

    def _parts(self):
        return [o for o in (self.muon, self.adamw) if o is not None]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._parts():
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._parts():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])
