"""Unit tests of the method's pieces: masking, MDrop, Eq. 1, codes, the hyper-network on both U-Net classes."""
import itertools

import pytest
import torch

from nnunet_allstage.losses import reconstruction_loss
from nnunet_allstage.masking import mask_input, modality_dropout, patch_mask, zero_missing
from nnunet_allstage.networks import HyperSegNetwork, code_indices, derive_code, transfer_weights
from nnunet_allstage.modalities import code_to_index


def small_unet(kind: str, in_channels: int, num_classes: int, deep_supervision: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    common = dict(input_channels=in_channels, n_stages=3, features_per_stage=(8, 16, 32), conv_op=torch.nn.Conv3d,
                  kernel_sizes=3, strides=(1, 2, 2), num_classes=num_classes, n_conv_per_stage_decoder=1,
                  conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=1, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=(1, 1, 1), **common)


def test_patch_mask_ratio_and_independent_masks():
    torch.manual_seed(0)
    kept = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.float32)
    visible = patch_mask((2, 4, 64, 64, 64), kept, patch_size=16, mask_ratio=0.875)
    assert set(visible.unique().tolist()) <= {0.0, 1.0}
    # 64 patches per modality: 1/8 of all kept-modality patches stays visible
    assert visible[0].sum() / 16 ** 3 == round(0.125 * 4 * 64)
    assert visible[1].sum() / 16 ** 3 == round(0.125 * 2 * 64)
    assert visible[1, 1].sum() == 0 and visible[1, 3].sum() == 0  # dropped modalities fully hidden
    assert not torch.equal(visible[0, 0], visible[0, 2])  # each modality its own mask
    # masks are whole 16^3 patches
    blocks = visible[0, 0].unfold(0, 16, 16).unfold(1, 16, 16).unfold(2, 16, 16).reshape(-1, 16 ** 3)
    assert torch.all((blocks.sum(1) == 0) | (blocks.sum(1) == 16 ** 3))


def test_patch_mask_non_divisible_shape_and_at_least_one_visible():
    kept = torch.tensor([[0, 1, 0]], dtype=torch.float32)
    visible = patch_mask((1, 3, 20, 24, 17), kept, patch_size=16, mask_ratio=0.99)
    assert visible.shape == (1, 3, 20, 24, 17) and visible[0, 1].sum() > 0


def test_mask_input_zeroes_masked_voxels():
    x = torch.randn(2, 4, 32, 32, 32)
    kept = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 1]])
    masked = mask_input(x, kept, 16, 0.875)
    assert not masked[0, 2].any() and not masked[1, 0].any()  # dropped modalities fully hidden
    nz = masked != 0
    assert torch.equal(masked[nz], x[nz])
    assert (~nz).float().mean() > 0.8


def test_modality_dropout_uniform_over_nonempty_subsets():
    gen = torch.Generator().manual_seed(0)
    n = 60000
    codes = modality_dropout(torch.ones(n, 4), gen)
    assert codes.sum(1).min() >= 1
    counts = torch.unique(codes, dim=0, return_counts=True)[1]
    assert len(counts) == 15
    expected = n / 15
    assert ((counts - expected).abs() < 0.06 * expected).all(), counts  # ~6 standard deviations
    partial = modality_dropout(torch.tensor([[1.0, 0, 1, 1]]).repeat(21000, 1), gen)
    assert partial[:, 1].sum() == 0 and partial.sum(1).min() >= 1
    assert len(torch.unique(partial, dim=0)) == 7


def test_modality_dropout_full_set_probability():
    gen = torch.Generator().manual_seed(1)
    n = 40000
    codes = modality_dropout(torch.ones(n, 4), gen, full_set_probability=0.5)
    full = codes.sum(1) == 4
    assert abs(full.float().mean() - 0.5) < 0.02  # sd 0.0025
    subsets, counts = torch.unique(codes[~full], dim=0, return_counts=True)
    assert len(subsets) == 14  # the rest uniform over the proper non-empty subsets
    assert ((counts - counts.float().mean()).abs() < 0.1 * counts.float().mean()).all(), counts
    single = modality_dropout(torch.tensor([[0.0, 0, 1, 0]]).repeat(100, 1), gen, full_set_probability=0.0)
    assert torch.equal(single, torch.tensor([[0.0, 0, 1, 0]]).repeat(100, 1))  # nothing else to keep
    never = modality_dropout(torch.tensor([[1.0, 1, 0, 1]]).repeat(2000, 1), gen, full_set_probability=0.0)
    assert never.sum(1).max() < 3 and never[:, 2].sum() == 0


def test_reconstruction_loss_ignores_unavailable_modalities():
    target = torch.randn(2, 3, 8, 8, 8)
    recon = target.clone()
    recon[0, 1] += 100.0  # modality 1 of sample 0 is not available in the data: its error must not count
    recon[1, 0] += 1.0
    available = torch.tensor([[1.0, 0, 1], [1, 1, 1]])
    loss, per_mod = reconstruction_loss(recon, target, available, per_modality=True)
    assert torch.isclose(loss, torch.tensor((0.0 + 1.0 / 3) / 2))
    assert torch.isnan(per_mod[0, 1]) and per_mod[1, 0] == pytest.approx(1.0)
    zero = reconstruction_loss(recon, target, torch.zeros(2, 3))  # guarded denominator
    assert torch.isfinite(zero) and zero == 0


def test_zero_missing_removes_augmentation_noise():
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    image = torch.randn(4, 16, 16, 16)
    image[2] = 0
    noisy = GaussianNoiseTransform(noise_variance=(0.1, 0.1), p_per_channel=1, synchronize_channels=True)(
        image=image.clone())["image"]
    assert noisy[2].abs().sum() > 0  # nnU-Net's augmentation leaks into the missing channel
    code = torch.tensor([[1.0, 1, 0, 1]])
    cleaned = zero_missing(noisy[None], code)[0]
    assert cleaned[2].abs().sum() == 0 and torch.equal(cleaned[0], noisy[0])


def test_code_derivation_and_indices():
    x = torch.randn(3, 4, 8, 8, 8)
    x[0, 1] = 0
    x[1] = 0  # all-zero patch: 'all present'
    code = derive_code(x)
    assert code.tolist() == [[1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    for c in itertools.product((0, 1), repeat=4):
        if any(c):
            assert code_indices(torch.tensor([c], dtype=torch.float32)).item() == code_to_index(c)
    assert code_indices(torch.zeros(1, 4)).item() == code_to_index((1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["plain", "resenc"])
@pytest.mark.parametrize("m", [3, 4])
def test_hyper_network_codes_change_output_and_train_the_controller(kind, m):
    torch.manual_seed(0)
    net = HyperSegNetwork(small_unet(kind, m, 3), m, 3, embedding_dim=512)
    net.code_table.copy_(torch.randn_like(net.code_table))
    x = torch.randn(2, m, 16, 16, 16)
    full, partial = torch.ones(2, m), torch.ones(2, m)
    partial[:, 0] = 0
    out_full = net(x, full)
    assert isinstance(out_full, list) and out_full[0].shape == (2, 3, 16, 16, 16)  # deep supervision on
    assert out_full[1].shape == (2, 3, 8, 8, 8)
    out_partial = net(x, partial)
    assert not torch.allclose(out_full[0], out_partial[0])
    assert torch.allclose(out_full[1], out_partial[1])  # static deep-supervision heads do not see the code
    out_full[0].pow(2).mean().backward()
    head = net.hyper_head
    assert head.controller.weight.grad.abs().sum() > 0 and head.text_proj[0].weight.grad.abs().sum() > 0
    # per-sample heads: each sample of a batch gets its own code
    mixed = torch.stack([full[0], partial[0]])
    with torch.no_grad():
        both = net(x, mixed)[0]
        assert torch.allclose(both[0], net(x[:1], full[:1])[0][0], atol=1e-5)
        assert torch.allclose(both[1], net(x[1:], partial[:1])[0][0], atol=1e-5)


def test_hyper_network_without_code_derives_it_from_input():
    torch.manual_seed(0)
    net = HyperSegNetwork(small_unet("plain", 4, 3, deep_supervision=False), 4, 3, embedding_dim=512).eval()
    net.code_table.copy_(torch.randn_like(net.code_table))
    x = torch.randn(1, 4, 16, 16, 16)
    x[:, 2] = 0
    with torch.no_grad():
        assert torch.allclose(net(x), net(x, torch.tensor([[1.0, 1, 0, 1]])))


@pytest.mark.parametrize("kind", ["plain", "resenc"])
def test_mae_weights_transfer_to_hyper_network(kind):
    mae = small_unet(kind, 4, 4, deep_supervision=False)  # M-channel reconstruction head
    seg = HyperSegNetwork(small_unet(kind, 4, 3), 4, 3, embedding_dim=4, binary_code=True)
    loaded, skipped = transfer_weights(mae.state_dict(), seg)
    assert loaded > 0 and all(".seg_layers." in s or s == "code_table" for s in skipped)
    for name, value in seg.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(value, mae.state_dict()[name])


def test_embedding_table_survives_checkpoint_roundtrip(tmp_path):
    net = HyperSegNetwork(small_unet("plain", 4, 3), 4, 3, embedding_dim=512)
    net.code_table.copy_(torch.randn_like(net.code_table))
    torch.save({"network_weights": net.state_dict()}, tmp_path / "c.pth")
    fresh = HyperSegNetwork(small_unet("plain", 4, 3), 4, 3, embedding_dim=512)
    from nnunet_allstage.checkpoints import safe_load
    fresh.load_state_dict(safe_load(tmp_path / "c.pth")["network_weights"], strict=True)  # a buffer, kept
    assert torch.equal(fresh.code_table, net.code_table)


def test_clip_table_random_cached_and_missing_weights_error(tmp_path, monkeypatch):
    from nnunet_allstage.errors import AllStageError
    from nnunet_allstage.text_embeddings import RANDOM_CLIP_TAG, clip_table
    import huggingface_hub.constants
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: where an earlier test imported it, the variable alone
    # would let the refusal below wait for the Hub's network timeouts (47 s) before failing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    table, description = clip_table(("FLAIR", "T1", "T1c", "T2"), pretrained=RANDOM_CLIP_TAG)
    assert table.shape == (15, 512) and torch.allclose(table.norm(dim=1), torch.ones(15))
    assert "RANDOM" in description
    assert len(list((tmp_path / "nnunet_allstage" / "text_embeddings").glob("*.pt"))) == 1
    again, _ = clip_table(("FLAIR", "T1", "T1c", "T2"), pretrained=RANDOM_CLIP_TAG)
    assert torch.equal(table, again)
    assert len({tuple(r.tolist()) for r in table}) == 15  # one embedding per combination
    with pytest.raises(AllStageError, match="NNUNET_ALLSTAGE_CLIP_WEIGHTS"):
        clip_table(("A", "B"), pretrained="openai")
    with pytest.raises(AllStageError, match="not found"):
        clip_table(("A", "B"), weights_file=str(tmp_path / "absent.bin"))


# ---------------------------------------------------------------- stage 4 pieces
from nnunet_allstage.losses import mad_loss, multi_level_mad, uncertainty_weights  # noqa: E402
from nnunet_allstage.masking import fill_missing  # noqa: E402


def test_mad_zero_for_identical_and_scale_invariant():
    torch.manual_seed(0)
    f = torch.randn(2, 6, 3, 3, 3)
    w = torch.full((54,), 1 / 54)
    assert mad_loss(f, f.clone(), w) == pytest.approx(0.0, abs=1e-6)
    g = torch.randn(2, 6, 3, 3, 3)
    base = mad_loss(f, g, w)
    assert base > 0
    assert mad_loss(3.7 * f, g, w) == pytest.approx(base.item(), rel=1e-4)
    assert mad_loss(f, 0.2 * g, w) == pytest.approx(base.item(), rel=1e-4)


def test_mad_matches_hand_computation():
    # one sample, two positions, two channels: rows f1=(1,0), f2=(1,1) for the student; (1,0), (0,1) teacher
    fs = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 2, 1, 1)  # (B, C, 2, 1, 1): positions along x
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 2, 1, 1)
    # student Gram [[1,1],[1,2]] -> rows /sqrt2, /sqrt5; teacher Gram = identity
    gs = torch.tensor([[1 / 2 ** 0.5, 1 / 2 ** 0.5], [1 / 5 ** 0.5, 2 / 5 ** 0.5]])
    l1 = (gs[0, 0] - 1) ** 2 + gs[0, 1] ** 2
    l2 = gs[1, 0] ** 2 + (gs[1, 1] - 1) ** 2
    w = torch.tensor([0.25, 0.75])
    assert mad_loss(fs, ft, w).item() == pytest.approx((0.25 * l1 + 0.75 * l2).item(), rel=1e-6)


def test_uncertainty_weights_sum_to_one_and_follow_entropy():
    logits = torch.full((2, 3, 8, 8, 8), 10.0)  # confident everywhere...
    logits[1, :, :4] = 0.0  # ...except one half of sample 1 (entropy maximal there)
    w = uncertainty_weights(logits, (2, 2, 2), regions=True)
    assert w.shape == (16,) and w.sum() == pytest.approx(1.0, abs=1e-6)
    w = w.view(2, 2, 2, 2)
    assert w[1, 0].min() > 100 * w[0].max()
    soft = uncertainty_weights(torch.randn(2, 4, 8, 8, 8), (4, 4, 4), regions=False)
    assert soft.sum() == pytest.approx(1.0, abs=1e-6) and (soft > 0).all()


def test_multi_level_mad_pools_and_detaches_teacher():
    torch.manual_seed(0)
    student = [torch.randn(2, 4, 16, 16, 16, requires_grad=True), torch.randn(2, 8, 4, 4, 4, requires_grad=True)]
    teacher = [torch.randn(2, 4, 16, 16, 16, requires_grad=True), torch.randn(2, 8, 4, 4, 4, requires_grad=True)]
    loss = multi_level_mad(student, teacher, torch.randn(2, 3, 32, 32, 32), max_size=8, regions=True)
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_fill_missing_keeps_available_channels_bit_identical():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 8)
    available = torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]])
    x = zero_missing(x, available)
    recovered = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    filled = fill_missing(x, available, recovered)
    assert torch.equal(filled[0, [0, 2, 3]], x[0, [0, 2, 3]]) and torch.equal(filled[1], x[1])
    assert torch.equal(filled[0, 1], recovered[0, 1])
    filled.sum().backward()
    assert recovered.grad[0, 1].abs().sum() > 0 and recovered.grad[0, 0].abs().sum() == 0


# ---------------------------------------------------------------- ready for GPUs: stateless head, compile, bf16, 2d
def _hyper(conv_dims: int = 3, deep_supervision: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    conv = torch.nn.Conv3d if conv_dims == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if conv_dims == 3 else torch.nn.InstanceNorm2d
    unet = PlainConvUNet(4, 3, (8, 16, 32), conv, 3, (1, 2, 2), 1, 3, 1, True, norm, {"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)
    net = HyperSegNetwork(unet, 4, 3, embedding_dim=16)
    net.code_table.copy_(torch.randn_like(net.code_table))
    return net


def test_one_code_for_a_batch_of_windows_and_2d():
    torch.manual_seed(0)
    net = _hyper().eval()
    x = torch.randn(3, 4, 16, 16, 16)
    one = torch.tensor([[1.0, 0, 1, 1]])
    with torch.no_grad():
        shared = net(x, one)[0]
        each = net(x, one.expand(3, -1))[0]
    assert torch.allclose(shared, each, atol=1e-6)
    flat = _hyper(conv_dims=2).eval()  # nnU-Net's 2d configuration: the head's convolutions follow the planned ones
    assert isinstance(flat.hyper_head.feature_proj[-1], torch.nn.Conv2d)
    with torch.no_grad():
        assert flat(torch.randn(2, 4, 16, 16), torch.ones(2, 4))[0].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("conv_dims", [3, 2])
def test_hyper_head_is_each_samples_own_1x1_convolutions(conv_dims):
    """The batched matrix products of the head equal, sample by sample, three ordinary 1x1 convolutions with the
    generated weights (the grouped convolution it replaced)."""
    torch.manual_seed(0)
    head = _hyper(conv_dims).hyper_head
    spatial = (6, 5, 4)[:conv_dims]
    features, bottleneck = torch.randn(2, 8, *spatial), torch.randn(2, 32, *(2,) * conv_dims)
    embedding = torch.randn(1, 16)
    conv = torch.nn.functional.conv3d if conv_dims == 3 else torch.nn.functional.conv2d
    with torch.no_grad():
        out = head(features, bottleneck, embedding)
        params = head.generate(bottleneck, embedding)
        for b in range(2):
            h = head.feature_proj(features[b:b + 1])
            for i in range(3):
                w = params[i][b].view(-1, 8, *(1,) * conv_dims)
                h = conv(h, w, params[3 + i][b])
                h = torch.relu(h) if i < 2 else h
            assert torch.allclose(out[b:b + 1], h, atol=1e-5)
    assert out.shape == (2, 3, *spatial)


def test_bfloat16_autocast_through_the_head_and_every_loss():
    from nnunet_allstage.losses import multi_level_mad, reconstruction_loss
    torch.manual_seed(0)
    net = _hyper()
    x = torch.randn(2, 4, 16, 16, 16)
    code = torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, skips = net(x, code, return_features=True)
        params = net.hyper_head.generate(skips[-1], net.code_table[code_indices(code)])
        teacher_out, teacher_skips = net(x, torch.ones_like(code), return_features=True)
        kd = multi_level_mad(skips[-2:], [s.detach() for s in teacher_skips[-2:]], teacher_out[0].detach(), 4, True)
        rec, _ = reconstruction_loss(out[0].repeat(1, 2, 1, 1, 1)[:, :4], x, code, per_modality=True)
        seg = torch.nn.functional.binary_cross_entropy_with_logits(out[0], (x[:, :3] > 0).float())
    assert params[0].dtype == skips[-1].dtype == torch.bfloat16  # generated parameters follow the features
    assert out[0].dtype == torch.bfloat16
    for loss in (kd, rec, seg):
        assert torch.isfinite(loss.float()).all()
    (kd.float() + rec.float() + seg.float()).backward()
    assert torch.isfinite(net.hyper_head.controller.weight.grad).all()


@pytest.mark.slow
def test_compiled_network_gives_the_eager_outputs():
    torch.manual_seed(0)
    net = _hyper().eval()
    x = torch.randn(2, 4, 16, 16, 16)
    codes = [torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]]), torch.ones(2, 4)]
    compiled = torch.compile(net)
    with torch.no_grad():
        for code in codes:  # a new code is new data, not a new graph
            eager, fast = net(x, code), compiled(x, code)
            assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(eager, fast))
