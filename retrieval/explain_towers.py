"""Image towers cut open for explanations: where each family's spatial activations are, and how the rest runs.

:mod:`retrieval.explain` asks three things of an image tower, and this module
answers them for every tower family the engine runs:

* a *cut*: ``prefix(pixels) -> A`` (run without gradients) and ``rest(A) ->
  embedding`` (differentiable), with ``cells(A)`` the spatial activations as a
  (batch, gh, gw, channels) grid. Grad-CAM differentiates ``rest`` only, so a
  gradient map costs about one image encode plus a backward pass through the
  last block.
* ``cell_embeddings(A)``: one embedding per spatial cell, as if that cell alone
  had been pooled (the "tokens" method).
* ``attention(A)``: the last attention that pools the picture into one vector,
  taken apart into query, keys, values and its output (Grad-ECLIP).

Families: open_clip ``VisionTransformer`` (cut at the input of its last
block), ``ModifiedResNet`` (RN50-style: cut after the deepest stage whose grid
is still at least :data:`MIN_GRID_SIDE` cells a side, since a small input can
leave the last stage 1x1), and ``TimmModel`` trunks: ViT-like ones (SigLIP's
attention-pool ``map`` head, class-token and average heads; cut at the input
of the last block) and convolutional ones (ConvNeXt: cut between stages like
the ResNet). Anything else raises :class:`ExplainUnsupportedError`; the
perturbation methods in :mod:`retrieval.explain` need only ``visual(pixels)``
and work on any tower.

Every cut is checked in the tests: ``rest(prefix(x))`` equals
``model.encode_image(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import ExplainUnsupportedError

# Gradient maps on a grid smaller than this per side cannot point at anything;
# convolutional towers are cut at an earlier stage until the grid is this big.
MIN_GRID_SIDE = 4


@dataclass(frozen=True)
class AttentionParts:
    """The pooling attention of a tower, for the pooled query only.

    ``q`` (B, H, d), ``k`` and ``v`` (B, H, N, d) over the N spatial cells (detached);
    ``o`` (B, H, d) the attention output at the pooled query, inside the graph
    that leads to ``embedding`` (B, D).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    embedding: torch.Tensor
    grid: tuple[int, int]


class Tower:
    """A cut through one image tower. Subclasses fill in the family's details."""

    family = "tower"

    def __init__(self, visual: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> None:
        self.visual = visual
        self.min_side = min_side  # convolutional towers: the smallest grid side a cut may have
        self.where = ""  # set by prefix(): which activations ``A`` are, for the report

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cells(self, a: torch.Tensor) -> torch.Tensor:
        """The spatial part of ``A`` as (B, gh, gw, C)."""
        raise NotImplementedError

    def cell_embeddings(self, a: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, D): each cell's embedding as if it alone had been pooled."""
        raise ExplainUnsupportedError(
            f"the 'tokens' method has no per-cell embedding for a {self.family} tower; use gradcam, occlusion or rise"
        )

    def attention(self, a: torch.Tensor) -> AttentionParts:
        raise ExplainUnsupportedError(
            f"the 'gradeclip' method needs a tower that pools the picture with attention; a {self.family} tower "
            "does not. Use gradcam, occlusion or rise"
        )


# -- open_clip ViT --------------------------------------------------------------------------


class OpenClipViT(Tower):
    """open_clip's VisionTransformer: A = the tokens entering the last transformer block."""

    family = "open_clip ViT"

    def __init__(self, visual: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> None:
        super().__init__(visual, min_side)
        self.blocks = visual.transformer.resblocks
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.grid = tuple(int(g) for g in visual.grid_size)

    def _run(self, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            return block(x.transpose(0, 1)).transpose(0, 1)
        return block(x)

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual._embeds(pixels)
        for block in self.blocks[:-1]:
            x = self._run(block, x)
        self.where = f"input of transformer block {len(self.blocks)} of {len(self.blocks)}"
        return x

    def _last(self, a: torch.Tensor) -> torch.Tensor:
        return self._run(self.blocks[-1], a)

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(self._last(a))
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def _grid_of(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        if tokens.shape[1] != gh * gw:
            raise ExplainUnsupportedError(f"{tokens.shape[1]} patch tokens do not make the {gh}x{gw} grid of this ViT")
        return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])

    def cells(self, a: torch.Tensor) -> torch.Tensor:
        return self._grid_of(a[:, 1:])  # open_clip ViTs have one class token

    def cell_embeddings(self, a: torch.Tensor) -> torch.Tensor:
        if self.visual.attn_pool is not None:
            return super().cell_embeddings(a)
        # Each patch token as the pooled token would be: final LayerNorm, then the projection.
        tokens = self.visual.ln_post(self._last(a)[:, 1:])
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        return self._grid_of(tokens)

    def attention(self, a: torch.Tensor) -> AttentionParts:
        from open_clip.transformer import ResidualAttentionBlock

        block = self.blocks[-1]
        visual = self.visual
        if (visual.attn_pool is not None or visual.pool_type != "tok" or type(block) is not ResidualAttentionBlock
                or hasattr(block, "ln_1_kv") or not getattr(block.attn, "_qkv_same_embed_dim", False)):
            return super().attention(a)
        mha = block.attn
        b, n, c = a.shape
        heads = mha.num_heads
        d = c // heads
        # The last block, written out for the class token's row (the only one pooled).
        q, k, v = F.linear(block.ln_1(a), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q0 = q[:, 0].reshape(b, heads, d)
        k = k.reshape(b, n, heads, d).transpose(1, 2)
        v = v.reshape(b, n, heads, d).transpose(1, 2)
        weights = torch.softmax(torch.einsum("bhd,bhnd->bhn", q0 * d ** -0.5, k), dim=-1)
        o = torch.einsum("bhn,bhnd->bhd", weights, v)
        x0 = a[:, 0] + block.ls_1(mha.out_proj(o.reshape(b, c)))
        x0 = x0 + block.ls_2(block.mlp(block.ln_2(x0)))
        pooled = visual.ln_post(x0)
        emb = pooled @ visual.proj if visual.proj is not None else pooled
        return AttentionParts(q0.detach(), k[:, :, 1:].detach(), v[:, :, 1:].detach(), o, emb, self.grid)


# -- open_clip ModifiedResNet -----------------------------------------------------------------


class OpenClipResNet(Tower):
    """open_clip's ModifiedResNet (RN50-style): A = the output of the deepest stage with a usable grid."""

    family = "open_clip ResNet"

    def __init__(self, visual: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> None:
        super().__init__(visual, min_side)
        self.stages = [visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        self._cut = 4

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        outs = []
        x = pixels
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        # The deepest stage (layer1..layer4) whose grid is big enough to point with.
        self._cut = next((i for i in (4, 3, 2, 1) if min(outs[i].shape[-2:]) >= self.min_side), 1)
        h, w = outs[self._cut].shape[-2:]
        self.where = f"output of layer{self._cut} ({h}x{w}" + (")" if self._cut == 4 else ", layer4's grid is too small)")
        return outs[self._cut]

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        x = a
        for stage in self.stages[self._cut + 1:]:
            x = stage(x)
        return self.visual.attnpool(x)

    def cells(self, a: torch.Tensor) -> torch.Tensor:
        return a.permute(0, 2, 3, 1)

    def _pool_input(self, a: torch.Tensor) -> torch.Tensor:
        """layer4's output as (B, 1 + hw, C) with the positional embedding, as the attention pool sees it."""
        x = self.rest_to_layer4(a)
        if min(x.shape[-2:]) < 2:
            raise ExplainUnsupportedError(
                f"this ResNet's last feature map is {x.shape[-2]}x{x.shape[-1]}: too small for per-cell methods "
                "(tokens, gradeclip); use gradcam, occlusion or rise"
            )
        x = x.flatten(2).permute(0, 2, 1)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        return x + self.visual.attnpool.positional_embedding[None].to(x.dtype)

    def rest_to_layer4(self, a: torch.Tensor) -> torch.Tensor:
        x = a
        for stage in self.stages[self._cut + 1:]:
            x = stage(x)
        return x

    def cell_embeddings(self, a: torch.Tensor) -> torch.Tensor:
        # MaskCLIP (Zhou et al., ECCV 2022): each cell through the pool's value and output projections.
        pool = self.visual.attnpool
        x = self._pool_input(a)
        emb = pool.c_proj(pool.v_proj(x[:, 1:]))
        h, w = self.rest_to_layer4(a).shape[-2:]
        return emb.reshape(a.shape[0], h, w, -1)

    def attention(self, a: torch.Tensor) -> AttentionParts:
        pool = self.visual.attnpool
        x = self._pool_input(a)
        b, n, c = x.shape
        heads = pool.num_heads
        d = c // heads
        q0 = pool.q_proj(x[:, 0]).reshape(b, heads, d)
        k = pool.k_proj(x).reshape(b, n, heads, d).transpose(1, 2)
        v = pool.v_proj(x).reshape(b, n, heads, d).transpose(1, 2)
        weights = torch.softmax(torch.einsum("bhd,bhnd->bhn", q0 * d ** -0.5, k), dim=-1)
        o = torch.einsum("bhn,bhnd->bhd", weights, v)
        emb = pool.c_proj(o.reshape(b, c))
        h, w = self.rest_to_layer4(a).shape[-2:]
        return AttentionParts(q0.detach(), k[:, :, 1:].detach(), v[:, :, 1:].detach(), o, emb, (int(h), int(w)))


# -- timm trunks ------------------------------------------------------------------------------


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the wanted activations are in hand."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def _input_of(module: torch.nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """The input that ``module`` receives during ``run()``; the rest of the forward pass is skipped."""

    def hook(_module: torch.nn.Module, args: tuple) -> None:
        raise _Captured(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        run()
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise ExplainUnsupportedError("the image tower never ran its last block")


class TimmViT(Tower):
    """A timm ViT-like trunk (SigLIP ``map`` head, class token or average pooling): A = input of the last block."""

    family = "timm ViT"

    def __init__(self, visual: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> None:
        super().__init__(visual, min_side)
        self.trunk = visual.trunk
        self.npt = int(getattr(self.trunk, "num_prefix_tokens", 0))
        self.grid: tuple[int, int] = (0, 0)

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        a = _input_of(self.trunk.blocks[-1], lambda: self.trunk.forward_features(pixels))
        n = a.shape[1] - self.npt
        grid = getattr(self.trunk.patch_embed, "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == n:
            self.grid = (int(grid[0]), int(grid[1]))
        else:  # dynamic image size: the grid follows the input
            ph, pw = self.trunk.patch_embed.patch_size
            self.grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
        self.where = f"input of block {len(self.trunk.blocks)} of {len(self.trunk.blocks)}"
        return a

    def _last(self, a: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm(self.trunk.blocks[-1](a))

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.trunk.head(self.trunk.head_drop(self.trunk.fc_norm(pooled)))
        return self.visual.head(x)

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        return self.visual.head(self.trunk.forward_head(self._last(a)))

    def cells(self, a: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        return a[:, self.npt:].reshape(a.shape[0], gh, gw, a.shape[-1])

    def cell_embeddings(self, a: torch.Tensor) -> torch.Tensor:
        if getattr(self.visual.head, "pool", None) is not None:
            return super().cell_embeddings(a)
        tokens = self._last(a)[:, self.npt:]
        b, n, c = tokens.shape
        pool = getattr(self.trunk, "attn_pool", None)
        if pool is not None:
            # An attention pool over one token is that token's value path: MaskCLIP's reading of the head.
            pooled = pool(tokens.reshape(b * n, 1, c))
        else:
            pooled = tokens.reshape(b * n, c)
        gh, gw = self.grid
        return self._finish(pooled).reshape(b, gh, gw, -1)

    def attention(self, a: torch.Tensor) -> AttentionParts:
        from timm.layers import AttentionPoolLatent

        pool = getattr(self.trunk, "attn_pool", None)
        if type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pool not in ("token", "avg"):
            return super().attention(a)
        x = self._last(a)
        if not getattr(self.trunk, "pool_include_prefix", False):
            x = x[:, self.npt:]
        elif self.npt:
            raise ExplainUnsupportedError("gradeclip: this head pools the class token with the patches; use gradcam")
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        b, n, _ = x.shape
        heads, d = pool.num_heads, pool.head_dim
        q = pool.q(pool.latent.expand(b, -1, -1)).reshape(b, 1, heads, d).transpose(1, 2)
        k, v = pool.kv(x).reshape(b, n, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pool.q_norm(q), pool.k_norm(k)
        q0 = q[:, :, 0]
        weights = torch.softmax(torch.einsum("bhd,bhnd->bhn", q0 * pool.scale, k), dim=-1)
        o = torch.einsum("bhn,bhnd->bhd", weights, v)
        y = pool.proj_drop(pool.proj(o.reshape(b, 1, heads * d)))
        if pool.mlp is not None:
            y = y + pool.mlp(pool.norm(y))
        return AttentionParts(q0.detach(), k.detach(), v.detach(), o, self._finish(y[:, 0]), self.grid)


class TimmConv(Tower):
    """A convolutional timm trunk (ConvNeXt and kin): A = a stage's output, cut like the ResNet."""

    family = "timm convnet"

    def __init__(self, visual: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> None:
        super().__init__(visual, min_side)
        self.trunk = visual.trunk
        stages = getattr(self.trunk, "stages", None)
        self._staged = stages is not None and hasattr(self.trunk, "stem") and hasattr(self.trunk, "norm_pre")
        self._cut = -1

    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self._staged:
            a = self.trunk.forward_features(pixels)
            if a.ndim != 4:
                raise ExplainUnsupportedError(
                    f"the timm trunk {type(self.trunk).__name__} gives no spatial feature map; use occlusion or rise"
                )
            self.where = "the trunk's final features"
            return a
        x = self.trunk.stem(pixels)
        outs = []
        for stage in self.trunk.stages:
            x = stage(x)
            outs.append(x)
        outs[-1] = self.trunk.norm_pre(outs[-1])
        last = len(outs) - 1
        self._cut = next((i for i in range(last, -1, -1) if min(outs[i].shape[-2:]) >= self.min_side), 0)
        h, w = outs[self._cut].shape[-2:]
        self.where = f"output of stage {self._cut + 1} of {len(outs)} ({h}x{w})"
        return outs[self._cut]

    def _features(self, a: torch.Tensor) -> torch.Tensor:
        if not self._staged or self._cut == len(self.trunk.stages) - 1:
            return a
        x = a
        for stage in list(self.trunk.stages)[self._cut + 1:]:
            x = stage(x)
        return self.trunk.norm_pre(x)

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        return self.visual.head(self.trunk.forward_head(self._features(a)))

    def cells(self, a: torch.Tensor) -> torch.Tensor:
        return a.permute(0, 2, 3, 1)

    def cell_embeddings(self, a: torch.Tensor) -> torch.Tensor:
        if getattr(self.visual.head, "pool", None) is not None:
            return super().cell_embeddings(a)
        feats = self._features(a)
        b, c, h, w = feats.shape
        if min(h, w) < 2:
            raise ExplainUnsupportedError(
                f"this tower's last feature map is {h}x{w}: too small for the tokens method; use gradcam, occlusion or rise"
            )
        # A global pool of a 1x1 map is the cell itself: the head then reads one cell at a time.
        cells = feats.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)
        return self.visual.head(self.trunk.forward_head(cells)).reshape(b, h, w, -1)


def tower_of(model: torch.nn.Module, min_side: int = MIN_GRID_SIDE) -> Tower:
    """The cut for ``model.visual``; raises :class:`ExplainUnsupportedError` for an unknown family.

    ``min_side``: a convolutional tower is cut after its deepest stage whose
    grid is at least this many cells a side (ViTs are always cut at their last block).
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        return OpenClipViT(visual, min_side)
    if isinstance(visual, ModifiedResNet):
        return OpenClipResNet(visual, min_side)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(visual, "head"):
        if all(hasattr(trunk, name) for name in ("blocks", "patch_embed", "norm", "fc_norm", "forward_head")):
            return TimmViT(visual, min_side)
        if hasattr(trunk, "forward_features") and hasattr(trunk, "forward_head"):
            return TimmConv(visual, min_side)
    raise ExplainUnsupportedError(
        f"no gradient or token maps for a {type(visual).__name__} image tower; use occlusion or rise"
    )


def has_quantized_modules(module: torch.nn.Module) -> bool:
    """True when int8 dynamic quantisation replaced some layers (they have no backward pass)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())
