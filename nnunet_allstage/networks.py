"""Networks on top of whichever U-Net nnU-Net planned (PlainConvUNet, ResidualEncoderUNet, ...).

Both planned U-Nets expose ``encoder``, ``decoder`` and ``decoder.seg_layers``; the networks here keep those
attribute names, so state-dict keys stay those of the planned U-Net and weights move between stages by name.

* MAE (stage 1, and stage 4's recovering module g): the planned U-Net itself with M output channels and no deep
  supervision (`build_mae_network`).
* `HyperSegNetwork` (stages 2 and 4): the highest-resolution output layer ``decoder.seg_layers[-1]`` is replaced
  by a `HyperHead`, whose three 1x1x1 convolutions are generated per sample by a controller from the code's
  embedding and the pooled bottleneck (CLIP-Driven Universal Model / DoDNet). Deep-supervision outputs keep
  their static heads.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_allstage.modalities import index_to_code
from nnunet_allstage.private_api import compiled_inner
from nnunet_allstage.text_embeddings import CLIP_EMBEDDING_DIM

HEAD_CHANNELS = 8
CONTROLLER_WIDTH = 256


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def derive_code(x: torch.Tensor) -> torch.Tensor:
    """(B, M) availability from the input: an all-zero channel is missing. A sample with every channel zero
    (a patch in the background or the padding) counts as 'all present'."""
    code = x.detach().flatten(2).abs().amax(-1) > 0
    code[~code.any(1)] = True
    return code.float()


def code_indices(code: torch.Tensor) -> torch.Tensor:
    """Bit-order table rows for (B, M) codes; an all-zero code maps to 'all present'."""
    bits = code.round().long()
    bits[bits.sum(1) == 0] = 1
    weights = 2 ** torch.arange(code.shape[1], device=code.device)
    return (bits * weights).sum(1) - 1


class HyperHead(nn.Module):
    """Dynamic head: 8 -> 8 -> 8 -> K 1x1(x1) convolutions whose weights come from a controller.

    It sits where the planned U-Net has its last segmentation layer (so checkpoints keep nnU-Net's parameter
    names). Called by the decoder with the features alone it passes them through; `HyperSegNetwork` then calls it
    with the features, the bottleneck and the code embedding. Nothing is kept between calls, so the network can
    be compiled and a batch can share one code."""

    def __init__(self, in_channels: int, bottleneck_channels: int, embedding_dim: int, num_classes: int,
                 binary_code: bool, conv_op: type = nn.Conv3d):
        super().__init__()
        c, k = HEAD_CHANNELS, num_classes
        self.weight_sizes = [c * c, c * c, c * k]
        self.bias_sizes = [c, c, k]
        self.num_classes = num_classes
        self.feature_proj = nn.Sequential(_group_norm(in_channels), nn.ReLU(inplace=True),
                                          conv_op(in_channels, c, 1))
        self.image_proj = nn.Sequential(_group_norm(bottleneck_channels), nn.ReLU(inplace=True))
        self.image_fc = nn.Linear(bottleneck_channels, CONTROLLER_WIDTH)
        if binary_code:  # the paper's binary-code MLP ablation
            self.text_proj = nn.Sequential(nn.Linear(embedding_dim, CONTROLLER_WIDTH), nn.ReLU(inplace=True),
                                           nn.Linear(CONTROLLER_WIDTH, CONTROLLER_WIDTH), nn.ReLU(inplace=True))
        else:
            self.text_proj = nn.Sequential(nn.Linear(embedding_dim, CONTROLLER_WIDTH), nn.ReLU(inplace=True))
        self.controller = nn.Linear(2 * CONTROLLER_WIDTH, sum(self.weight_sizes) + sum(self.bias_sizes))
        # The controller predicts the head's parameters as an offset from learned base parameters initialised as an
        # ordinary He-initialised 1x1x1 head: at the start the dynamic head works like a static one, instead of a
        # product of three layers of tiny generated weights that barely passes a gradient (seen on CPU demo runs).
        base = [nn.init.kaiming_uniform_(torch.empty(n // c, c), a=5 ** 0.5 if i == 2 else 0).flatten()
                for i, n in enumerate(self.weight_sizes)]
        self.base_params = nn.Parameter(torch.cat(base + [torch.zeros(sum(self.bias_sizes))]))

    def generate(self, bottleneck: torch.Tensor, code_embedding: torch.Tensor) -> list[torch.Tensor]:
        """The head's parameters for each sample; one embedding row is shared by the whole batch."""
        z_image = self.image_fc(self.image_proj(bottleneck).flatten(2).mean(2))
        z_text = self.text_proj(code_embedding.to(z_image.dtype)).expand(z_image.shape[0], -1)
        params = self.controller(torch.cat([z_text, z_image], 1)) + self.base_params.to(z_image.dtype)
        return list(torch.split(params, self.weight_sizes + self.bias_sizes, dim=1))

    def forward(self, x: torch.Tensor, bottleneck: torch.Tensor | None = None,
                code_embedding: torch.Tensor | None = None) -> torch.Tensor:
        if bottleneck is None:
            return x  # the decoder's call: features pass through to HyperSegNetwork
        params = self.generate(bottleneck, code_embedding)
        weights, biases = params[:3], params[3:]
        b, spatial = x.shape[0], x.shape[2:]
        # per-sample 1x1(x1) convolutions as batched matrix products over the flattened positions: the same sums
        # as a grouped convolution with groups=B, which has no fast CPU kernel in 3d (the head's forward and
        # backward became 2.7x cheaper on the CPU); one batched GEMM on a GPU
        h = self.feature_proj(x).flatten(2)
        for i, (w, bias) in enumerate(zip(weights, biases)):
            out_c = w.shape[1] // HEAD_CHANNELS
            h = torch.baddbmm(bias.view(b, out_c, 1).to(h.dtype), w.view(b, out_c, HEAD_CHANNELS).to(h.dtype), h)
            if i < 2:
                h = F.relu(h)
        return h.view(b, self.num_classes, *spatial)


class HyperSegNetwork(nn.Module):
    """The planned U-Net with the CLIP-driven hyper head. ``forward(x, code=None)``: without a code (stock
    ``nnUNetv2_predict``) the code is derived from the input's zero channels."""

    def __init__(self, unet: nn.Module, num_modalities: int, num_classes: int, embedding_dim: int,
                 binary_code: bool = False):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.num_modalities = num_modalities
        last = self.decoder.seg_layers[-1]
        bottleneck_channels = self.encoder.output_channels[-1]
        self.decoder.seg_layers[-1] = HyperHead(last.in_channels, bottleneck_channels, embedding_dim, num_classes,
                                                binary_code, type(last))
        # filled by the trainer (text embeddings), restored from checkpoints at inference
        self.register_buffer("code_table", torch.zeros(2 ** num_modalities - 1, embedding_dim))
        if binary_code:
            self.code_table.copy_(torch.tensor([index_to_code(i, num_modalities)
                                                for i in range(2 ** num_modalities - 1)], dtype=torch.float32))
        self.code_override: torch.Tensor | None = None  # set by trainers around nnU-Net's own train/val steps

    @property
    def hyper_head(self) -> HyperHead:
        return self.decoder.seg_layers[-1]

    def forward(self, x: torch.Tensor, code: torch.Tensor | None = None, return_features: bool = False):
        if code is None:
            code = self.code_override if self.code_override is not None else derive_code(x)
        skips = self.encoder(x)
        out = self.decoder(skips)  # the highest resolution comes back as features (the head passes them)
        embedding = self.code_table[code_indices(code.to(x.device))]
        if isinstance(out, (list, tuple)):
            out = [self.hyper_head(out[0], skips[-1], embedding), *out[1:]]
        else:
            out = self.hyper_head(out, skips[-1], embedding)
        return (out, skips) if return_features else out


def forward_with_features(network: nn.Module, x: torch.Tensor, code: torch.Tensor | None):
    """(outputs, encoder skips) of a HyperSegNetwork (with ``code``) or of a planned U-Net (code unused), also
    through DDP or torch.compile wrappers."""
    if isinstance(unwrap(network), HyperSegNetwork):
        return network(x, code, return_features=True)
    network = unwrap(network)
    skips = network.encoder(x)
    return network.decoder(skips), skips


def freeze_unused_heads(network: nn.Module) -> nn.Module:
    """A planned U-Net built without deep supervision still holds its lower-resolution segmentation layers, which
    then take no part in the loss. Under DDP (nnU-Net's wrapper has no find_unused_parameters) parameters that get
    no gradient stop training at the second step, so those layers are frozen; state-dict keys are unchanged."""
    for layer in network.decoder.seg_layers[:-1]:
        layer.requires_grad_(False)
    return network


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)  # DDP
    return compiled_inner(network)


@contextmanager
def network_code(network: nn.Module, code: torch.Tensor | None):
    """Hands ``code`` to a network that takes one (a HyperSegNetwork, or any module with ``code_override``) for the
    calls nnU-Net's own train/validation steps and its predictor make."""
    target = unwrap(network)
    if not hasattr(target, "code_override") or code is None:
        yield
        return
    target.code_override = code
    try:
        yield
    finally:
        target.code_override = None


def transfer_weights(source_state: dict, target: nn.Module, exclude=(".seg_layers.",)) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape match, except names containing an ``exclude`` part.
    Returns (number loaded, names of the target left as they were)."""
    own = target.state_dict()
    loaded, skipped = {}, []
    for name, value in own.items():
        src = source_state.get(name)
        if any(e in name for e in exclude) or src is None or src.shape != value.shape:
            skipped.append(name)
        else:
            loaded[name] = src
    own.update(loaded)
    target.load_state_dict(own)
    return len(loaded), skipped


# ------------------------------------------------------------------------------------------------ builders
def build_planned_unet(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                       enable_deep_supervision: bool) -> nn.Module:
    """The U-Net nnU-Net planned for this configuration (PlainConvUNet, ResidualEncoderUNet, ...)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                    num_output_channels, enable_deep_supervision)


def build_mae_network(plans_manager, configuration_manager, num_modalities: int) -> nn.Module:
    """The MAE of stage 1 and stage 4's recovering module g: the planned U-Net with one output per modality and no
    deep supervision (its unused lower-resolution heads frozen)."""
    return freeze_unused_heads(build_planned_unet(plans_manager, configuration_manager, num_modalities,
                                                  num_modalities, enable_deep_supervision=False))


def build_hyper_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                        enable_deep_supervision: bool, binary_code: bool) -> HyperSegNetwork:
    """The planned U-Net with the hyper head, its codes embedded by CLIP or (``binary_code``) the binary-code MLP."""
    unet = build_planned_unet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              enable_deep_supervision)
    embedding_dim = num_input_channels if binary_code else CLIP_EMBEDDING_DIM
    return HyperSegNetwork(unet, num_input_channels, num_output_channels, embedding_dim, binary_code)
