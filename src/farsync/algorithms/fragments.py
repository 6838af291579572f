"""Splitting a model's parameters into F fragments (Streaming DiLoCo).

- ``strided`` (default for models with repeated blocks): the model's largest ``nn.ModuleList``
  holds its blocks; fragment k gets blocks {k, k+F, k+2F, ...} (the paper's strided pattern). The
  parameters outside the blocks (embeddings, final norm, head) are given one tensor at a time, in
  model order, to the fragment that is smallest so far, so fragments stay of similar size.
- ``contiguous``: the parameter tensors in model order cut into F runs of about d/F values each.

``strided`` with more fragments than blocks (or a model without a block list and F > 1) is an
error that names ``algorithm.fragments`` and the blocks found: silently cutting the model another
way would run a different experiment. Ask for ``fragment_rule: contiguous`` to get that split.

- by name: ``fragments: [[transformer.h.0, transformer.h.2], [transformer.h.1, ...], ...]``, a
  list of module names per fragment (as torchft's StreamingDiLoCo takes lists of modules):
  fragment k holds the parameters of its modules (``model.get_submodule(name)``; a parameter's own
  dotted name works too). Every trainable parameter must be in exactly one fragment: a parameter
  in none or in two, a name that is not in the model, or an empty fragment is an error that names
  them, before any work starts.

All return, per fragment, the indices into ``params`` (the model's trainable parameters in
``model.parameters()`` order), each list sorted, every index in exactly one fragment.
"""

from __future__ import annotations

import torch
from torch import nn

RULES = ("strided", "contiguous")


def split_into_fragments(model: nn.Module, params: list[torch.Tensor], n: int | list[list[str]],
                         rule: str = "strided") -> list[list[int]]:
    if not isinstance(n, int):
        return fragments_by_name(model, params, n)
    if rule not in RULES:
        raise ValueError(f"unknown fragment rule {rule!r}; valid choices: {', '.join(RULES)}")
    if not 1 <= n <= len(params):
        raise ValueError(f"fragments must be in [1, {len(params)}] (the number of parameter tensors), got {n}")
    if rule == "contiguous" or n == 1:
        return _contiguous(params, n)
    blocks = largest_block_list(model)
    found = 0 if blocks is None else len(blocks)
    if found < n:
        what = f"{found} blocks (its largest nn.ModuleList)" if found else "no block list (an nn.ModuleList of blocks)"
        raise ValueError(f"algorithm.fragments ({n}) is larger than the {found} blocks of the model: it has {what}; "
                         f"use at most {found} fragments, or set algorithm.fragment_rule: contiguous to cut the "
                         "parameters in model order" if found else
                         f"algorithm.fragments ({n}) needs blocks to stride over, but the model has {what}; "
                         "set algorithm.fragment_rule: contiguous to cut the parameters in model order")
    return _strided(blocks, params, n)


def fragments_by_name(model: nn.Module, params: list[torch.Tensor], names: list[list[str]]) -> list[list[int]]:
    """The fragments given by module (or parameter) names; see the module docstring."""
    index = {id(p): i for i, p in enumerate(params)}
    param_names = {id(p): name for name, p in model.named_parameters()}
    owner: dict[int, int] = {}  # parameter index -> fragment
    twice: dict[str, list[int]] = {}
    frags: list[list[int]] = []
    for k, group in enumerate(names):
        if not group:
            raise ValueError(f"algorithm.fragments[{k}] is empty: give each fragment at least one module name")
        mine: set[int] = set()
        for name in group:
            try:
                sub = model.get_submodule(name)
                tensors = list(sub.parameters())
            except AttributeError:
                try:
                    tensors = [model.get_parameter(name)]
                except AttributeError:
                    tops = ", ".join(n for n, _ in model.named_children())
                    raise ValueError(f"algorithm.fragments[{k}]: {name!r} is not a module or parameter of the model "
                                     f"(its top-level modules: {tops}; all: print(model))") from None
            mine |= {index[id(t)] for t in tensors if id(t) in index}
        for i in sorted(mine):
            if i in owner and owner[i] != k:
                twice.setdefault(param_names.get(id(params[i]), f"#{i}"), [owner[i]]).append(k)
            owner.setdefault(i, k)
        frags.append(sorted(mine))
    if twice:
        listed = "; ".join(f"{n} in fragments {ks}" for n, ks in list(twice.items())[:8])
        raise ValueError(f"algorithm.fragments: every parameter must be in exactly one fragment, but {len(twice)} are "
                         f"in more than one ({listed}); a tensor shared by two modules (tied embeddings) goes in one fragment: list one "
                         "of its modules only")
    missing = [param_names.get(id(p), f"#{i}") for i, p in enumerate(params) if i not in owner]
    if missing:
        raise ValueError(f"algorithm.fragments: every parameter must be in exactly one fragment, but {len(missing)} are "
                         f"in none: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} (add their modules to a fragment)")
    if any(not f for f in frags):
        k = next(k for k, f in enumerate(frags) if not f)
        raise ValueError(f"algorithm.fragments[{k}] ({names[k]}) holds no trainable parameter")
    return frags


def largest_block_list(model: nn.Module) -> nn.ModuleList | None:
    """The model's blocks: its largest nn.ModuleList (None without one)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    return max(lists, key=len, default=None)


def _strided(blocks: nn.ModuleList, params: list[torch.Tensor], n: int) -> list[list[int]]:
    index = {id(p): i for i, p in enumerate(params)}
    frags: list[list[int]] = [[] for _ in range(n)]
    in_blocks = set()
    for b, block in enumerate(blocks):
        for p in block.parameters():
            if id(p) in index and id(p) not in in_blocks:
                frags[b % n].append(index[id(p)])
                in_blocks.add(id(p))
    size = [sum(params[i].numel() for i in f) for f in frags]
    for i, p in enumerate(params):
        if id(p) not in in_blocks:
            k = min(range(n), key=lambda j: (size[j], j))
            frags[k].append(i)
            size[k] += p.numel()
    return [sorted(f) for f in frags]


def _contiguous(params: list[torch.Tensor], n: int) -> list[list[int]]:
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    frags: list[list[int]] = []
    current, seen = [], 0
    for i, size in enumerate(sizes):
        current.append(i)
        seen += size
        frags_left, tensors_left = n - len(frags) - 1, len(sizes) - i - 1
        if frags_left > 0 and (seen * n >= total * (len(frags) + 1) or tensors_left == frags_left):
            frags.append(current)  # cut at the next multiple of d/n, keeping a tensor for each later fragment
            current = []
    frags.append(current)
    return frags
