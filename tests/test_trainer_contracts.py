"""What each network really receives inside a real train_step / validation_step of every trainer.

Each trainer is built through nnU-Net's own lookup on a tiny synthetic dataset, its predecessors are checkpoints
of freshly initialised earlier stages (the contract does not depend on training), and every batch carries
augmentation-like noise in all channels, so a missing modality that is not zeroed again is visible. Forward
pre-hooks on student, teacher and recovering module record their inputs.
"""
import os

import numpy as np
import pytest
import torch

from conftest import DATASET_ID, UNLABELLED_DATASET_ID

pytestmark = pytest.mark.slow

# predecessors that the session's trained chain does not hold, saved freshly initialised where the next stage looks
UNTRAINED_PREDECESSORS = ("AllStageHyperTrainer_Binary_1epoch", "AllStageMAEDATrainer_Binary_1epoch",
                          "AllStageMAEFinetuneTrainer_1epoch")


@pytest.fixture(scope="module")
def dataset(trained):
    """The shared planned dataset with the session's one-epoch chain as predecessors (the contract does not depend
    on training), plus untrained predecessors of the ablations; augmentation in the main process."""
    mp = pytest.MonkeyPatch()
    mp.setenv("nnUNet_n_proc_DA", "0")  # after planning, which it would break
    for name in UNTRAINED_PREDECESSORS:
        if not (trained.output_folder(name) / "checkpoint_final.pth").is_file():
            t = build(name)
            t.save_checkpoint(os.path.join(t.output_folder, "checkpoint_final.pth"))
    yield trained.root
    mp.undo()


def build(name: str, dataset_id: int = DATASET_ID):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", 0, name, "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    return trainer


class Recorder:
    """Forward pre-hooks (inputs) and forward hooks (outputs, highest resolution) of a network. A plain U-Net
    run for its features is called through its encoder and decoder, so those are hooked instead."""

    def __init__(self, network):
        self.inputs, self.outputs = [], []
        from nnunet_allstage.networks import HyperSegNetwork
        plain = hasattr(network, "encoder") and not isinstance(network, HyperSegNetwork)
        (network.encoder if plain else network).register_forward_pre_hook(self.pre, with_kwargs=True)
        (network.decoder if plain else network).register_forward_hook(self.post)

    def pre(self, module, args, kwargs):
        code = args[1] if len(args) > 1 else kwargs.get("code")
        if code is None:
            code = getattr(module, "code_override", None)  # nnU-Net's own steps hand the code this way
        self.inputs.append((args[0].detach().clone(), None if code is None else code.detach().clone()))

    def post(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output  # (outputs, features) with return_features
        out = out[0] if isinstance(out, list) else out  # deep supervision: the highest resolution first
        self.outputs.append(out.detach().clone())


def noisy_batch(trainer):
    """A real batch of the trainer's loader, relabelled to alternate a case that misses modalities and a
    full-modality case, with noise in every channel (what nnU-Net's Gaussian-noise augmentation does to an all-zero
    channel). Returns the batch and the availability of its cases, computed here from the record."""
    if getattr(trainer, "dataloader_train", None) is None:
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    record = trainer._availability_record["cases"]
    partial = next(k for k, v in sorted(record.items()) if not all(v))
    full = next(k for k, v in sorted(record.items()) if all(v))
    batch["keys"] = [(partial, full)[i % 2] for i in range(batch["data"].shape[0])]
    batch["data"] = batch["data"] + 0.5 * torch.randn_like(batch["data"])
    available = torch.tensor([record[k] for k in batch["keys"]], dtype=torch.float32)
    return batch, available


def rezeroed(batch, available):
    return batch["data"] * available[:, :, None, None, None]


def assert_code_matches_zero_pattern(x: torch.Tensor, code: torch.Tensor, available: torch.Tensor):
    """Every channel whose code is 0 is exactly zero; every channel whose code is 1 is not; the code never marks a
    modality that the case lacks."""
    assert code.shape == available.shape
    assert bool((code <= available).all()), (code, available)
    nonzero = x.flatten(2).abs().amax(2) > 0
    assert torch.equal(nonzero, code.bool()), (nonzero, code)


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())


SEGMENTATION_TRAINERS = ["AllStageHyperTrainer_1epoch", "AllStageDropoutTrainer_1epoch",
                         "AllStageMAEFinetuneTrainer_1epoch", "AllStageDAFinetuneTrainer_1epoch",
                         "AllStageDAHyperTrainer_1epoch", "AllStageHyperTrainer_Binary_1epoch",
                         "AllStageDAFinetuneTrainer_Binary_1epoch", "AllStageDAHyperTrainer_Binary_1epoch"]
STAGE4_TRAINERS = ["AllStageTrainer_1epoch", "AllStageTrainer_NoKD_1epoch", "AllStageTrainer_NoDataRefinement_1epoch",
                   "AllStageTrainer_NoHyperTeacher_1epoch", "AllStageTrainer_Binary_1epoch",
                   "AllStageTrainer_ModelDistNoMAE_Binary_1epoch", "AllStageTrainer_NoDataRefinement_Binary_1epoch",
                   "AllStageTrainer_NoHyperTeacher_Binary_1epoch"]


# what each trainer writes to its log when it starts from its predecessors (the paper's rows, Tables 4-5, Fig. 5)
STARTS_FROM = {
    "AllStageHyperTrainer_1epoch": "initialised from stage 1", "AllStageMAEFinetuneTrainer_1epoch": "initialised from stage 1",
    "AllStageDAFinetuneTrainer_1epoch": "initialised from stage 3", "AllStageDAHyperTrainer_1epoch": "initialised from stage 3",
    "AllStageHyperTrainer_Binary_1epoch": "binary codes", "AllStageDAFinetuneTrainer_Binary_1epoch": "initialised from stage 3",
    "AllStageDAHyperTrainer_Binary_1epoch": "initialised from stage 3",
    "AllStageMAEDATrainer_1epoch": "hyper-network, full-modality code",
    "AllStageMAEDATrainer_Binary_1epoch": "hyper-network, full-modality code",
    "AllStageTrainer_1epoch": "recovering module initialised from stage 3",
    "AllStageTrainer_NoKD_1epoch": "recovering module initialised from stage 3",
    "AllStageTrainer_NoDataRefinement_1epoch": "recovering module initialised from stage 3",
    "AllStageTrainer_NoHyperTeacher_1epoch": "frozen teacher (plain U-Net)",
    "AllStageTrainer_Binary_1epoch": "recovering module initialised from stage 3",
    "AllStageTrainer_ModelDistNoMAE_Binary_1epoch": "hyper-network, full-modality code",
    "AllStageTrainer_NoDataRefinement_Binary_1epoch": "recovering module initialised from stage 3",
    "AllStageTrainer_NoHyperTeacher_Binary_1epoch": "frozen teacher (plain U-Net)",
}


def assert_started_from_predecessors(t, name: str) -> None:
    if name in STARTS_FROM:
        assert STARTS_FROM[name] in open(t.log_file).read(), name


def assert_checkpoint_structure(t, name: str, path: str) -> None:
    """network_weights is the deployable network alone: a hyper head exactly for the hyper-network trainers, and
    g beside it exactly where co-distillation has one."""
    from nnunet_allstage.checkpoints import safe_load
    saved = safe_load(path)
    assert set(saved["network_weights"]) == set(t.network.state_dict())
    hyper = any(".hyper" in k or "code_table" in k for k in saved["network_weights"])
    assert hyper == ("Hyper" in name or name.startswith("AllStageTrainer")), name
    has_g = "recovery_weights" in saved["allstage"]
    assert has_g == ("ModelDistNoMAE" not in name and name.startswith("AllStageTrainer")), name
    assert saved["trainer_name"] == name


@pytest.mark.parametrize("name", SEGMENTATION_TRAINERS)
def test_segmentation_trainers_student_sees_mdrop_with_matching_code(dataset, name, tmp_path):
    t = build(name)
    t.load_predecessors()
    assert_started_from_predecessors(t, name)
    student = Recorder(t.network)
    hyper = name.startswith(("AllStageHyper", "AllStageDAHyper"))
    dropped = False
    for _ in range(4):
        batch, available = noisy_batch(t)
        t.train_step(batch)
        x, code = student.inputs[-1]
        if hyper:
            assert_code_matches_zero_pattern(x, code, available)
        else:  # a plain U-Net receives no code: its zero pattern is the code MDrop chose
            assert code is None
            code = (x.flatten(2).abs().amax(2) > 0).float()
            assert bool((code <= available).all()) and bool(code.any(1).all())
        dropped |= bool((code < available).any())
    assert dropped, "MDrop never dropped a modality in 4 steps"
    batch, available = noisy_batch(t)
    t.validation_step(batch)
    x, code = student.inputs[-1]
    if hyper:
        assert torch.equal(code, available)  # no MDrop in validation
    assert_code_matches_zero_pattern(x, available, available)
    t.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    assert_checkpoint_structure(t, name, str(tmp_path / "checkpoint.pth"))


@pytest.mark.parametrize("name", ["AllStageMAETrainer_1epoch", "AllStageMAEDATrainer_1epoch",
                                  "AllStageMAEDATrainer_Binary_1epoch"])
def test_mae_sees_zeroed_input_and_eq1_averages_over_available_modalities(dataset, name, monkeypatch):
    t = build(name)
    t.load_predecessors()
    assert_started_from_predecessors(t, name)
    mae = Recorder(t.network)
    teacher = Recorder(t.teacher) if hasattr(t, "teacher") else None
    teacher_before = params(t.teacher) if teacher else None
    mae_before = params(t.network)
    batch, available = noisy_batch(t)
    target = rezeroed(batch, available)
    out = t.train_step(batch)
    x, _ = mae.inputs[-1]
    nonzero = x.flatten(2).abs().amax(2) > 0
    assert bool((nonzero.float() <= available).all()) and bool(nonzero.any(1).all())
    # Eq. 1, computed here independently: per sample, the mean over the modalities available in the data
    reconstruction = mae.outputs[-1]
    mse = (reconstruction - target).pow(2).flatten(2).mean(2)
    expected = torch.stack([mse[b][available[b].bool()].mean() for b in range(len(available))]).mean()
    rec = out["rec"] if "rec" in out else torch.as_tensor(out["loss"])
    assert float(rec) == pytest.approx(float(expected), rel=1e-5)
    if teacher:
        t_in, t_code = teacher.inputs[-1]
        assert torch.equal(t_code, torch.ones_like(available))  # full-modality mode
        assert torch.equal(t_in, reconstruction)  # phi(MASK(x)): the whole reconstruction
        assert not changed(teacher_before, t.teacher)  # stage 3 updates the MAE only
        assert all(p.grad is None and not p.requires_grad for p in t.teacher.parameters())
    assert changed(mae_before, t.network)


@pytest.mark.parametrize("name", STAGE4_TRAINERS)
def test_stage4_contract(dataset, name, monkeypatch):
    import nnunet_allstage.training.codistillation as codistillation
    t = build(name)
    t.load_predecessors()
    assert_started_from_predecessors(t, name)
    student, teacher = Recorder(t.network), Recorder(t.teacher)
    recovery = Recorder(t.recovery) if t.use_recovery else None
    mad_calls = []
    original_mad = codistillation.multi_level_mad

    def recording_mad(student_features, teacher_features, teacher_logits, *args):
        mad_calls.append(teacher_logits.detach().clone())
        return original_mad(student_features, teacher_features, teacher_logits, *args)

    monkeypatch.setattr(codistillation, "multi_level_mad", recording_mad)
    before = {"student": params(t.network), "teacher": params(t.teacher)}
    if t.use_recovery:
        before["recovery"] = params(t.recovery)
    batch, available = noisy_batch(t)
    x_rezeroed = rezeroed(batch, available)
    t.train_step(batch)
    # the student: MDrop(x) with the code it is given
    x, code = student.inputs[-1]
    assert_code_matches_zero_pattern(x, code, available)
    # the teacher: the available channels bit-identical, g's fill-ins only where the case lacks a modality
    t_in, t_code = teacher.inputs[-1]
    if t.teacher_is_hyper:
        assert torch.equal(t_code, torch.ones_like(available))
    else:
        assert t_code is None
    mask = available.bool()[:, :, None, None, None].expand_as(t_in)
    assert torch.equal(t_in[mask], x_rezeroed[mask])
    if t.use_recovery:
        g_in, _ = recovery.inputs[-1]
        assert bool((g_in.flatten(2).abs().amax(2) > 0).float().le(available).all())  # g sees no missing modality
        fill = recovery.outputs[-1]
        assert torch.equal(t_in[~mask], fill[~mask])
    else:
        assert not t_in[~mask].any()  # (b): the teacher is fed only the available modalities
    # MAD's uncertainty weights come from the teacher's highest-resolution output
    if t.use_kd:
        assert len(mad_calls) == 1 and torch.equal(mad_calls[0], teacher.outputs[-1])
    else:
        assert not mad_calls
    # what is updated: the student always, g when it is refined, the teacher never
    assert changed(before["student"], t.network)
    assert not changed(before["teacher"], t.teacher)
    assert all(p.grad is None and not p.requires_grad for p in t.teacher.parameters())  # no gradient is even computed
    if t.use_recovery:
        assert changed(before["recovery"], t.recovery) == t.train_recovery
    # the checkpoint's network_weights is the student alone
    path = os.path.join(str(dataset), f"{name}_step.pth")
    t.save_checkpoint(path)
    from nnunet_allstage.checkpoints import safe_load
    saved = safe_load(path)["network_weights"]
    assert all(torch.equal(v, t.network.state_dict()[k]) for k, v in saved.items())
    assert_checkpoint_structure(t, name, path)
    # validation: the student sees the case's own availability
    batch, available = noisy_batch(t)
    t.validation_step(batch)
    x, code = student.inputs[-1]
    assert torch.equal(code, available)
    assert_code_matches_zero_pattern(x, code, available)


@pytest.mark.parametrize("name", ["AllStageHyperTrainer_1epoch", "AllStageTrainer_1epoch"])
def test_same_seed_same_weights(dataset, name, monkeypatch):
    """NNUNET_ALLSTAGE_SEED: network initialisation, nnU-Net's sampling and augmentation (in the main process),
    MDrop and the training steps all follow the seed."""
    def two_steps(seed: str):
        monkeypatch.setenv("NNUNET_ALLSTAGE_SEED", seed)
        t = build(name)
        t.load_predecessors()
        t.dataloader_train, t.dataloader_val = t.get_dataloaders()
        for _ in range(2):
            t.train_step(next(t.dataloader_train))
        return params(t.network)

    first, again, other = two_steps("7"), two_steps("7"), two_steps("8")
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert any(not torch.equal(v, other[k]) for k, v in first.items())


def test_compiled_stage4_train_step(dataset, monkeypatch):
    """Compiled as nnU-Net compiles on a GPU (its own rule keeps the CPU eager, so it is forced here). The graphs
    are captured and differentiated as under inductor, but run by torch's reference backend (aot_eager): inductor's
    code generation is torch's to test, and on the CPU it costs minutes (test_method_units compares an inductor-
    compiled network with the eager one)."""
    import functools
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    t = build("AllStageTrainer_1epoch")
    # the student is a compiled module, and so are the teacher and g, which run beside it every step
    assert all(hasattr(m, "_orig_mod") for m in (t.network, t.teacher, t.recovery))
    t.load_predecessors()
    teacher_before, recovery_before = params(t.teacher), params(t.recovery)
    before = params(t.network)
    batch, available = noisy_batch(t)
    out = t.train_step(batch)
    assert np.isfinite(float(out["loss"])) and changed(before, t.network)
    assert not changed(teacher_before, t.teacher) and changed(recovery_before, t.recovery)


def _ddp_stage4_worker(rank: int, world: int, init_file: str, out: str, steps: int) -> None:
    """One rank of a CPU DDP run of stage 4 through the trainer's own code paths; writes what it saw."""
    import json
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        t = build("AllStageTrainer_1epoch")
        t.load_predecessors()
        t.dataloader_train, t.dataloader_val = t.get_dataloaders()
        teacher_before = params(t.teacher)
        seen, outputs = [], []
        for _ in range(steps):
            t.network.train()
            outputs.append(t.train_step(next(t.dataloader_train)))
            flat = {name: torch.cat([p.detach().flatten() for p in module.parameters()])
                    for name, module in (("student", t.network), ("g", t.recovery))}
            gathered = {name: [torch.zeros_like(v) for _ in range(world)] for name, v in flat.items()}
            for name, v in flat.items():
                dist.all_gather(gathered[name], v)
            seen.append({name: all(torch.equal(g, gathered[name][0]) for g in gathered[name]) for name in flat})
        t.on_train_epoch_end(outputs)
        logged = {k: v[-1] for k, v in private_api_epoch_log(t).items() if k.startswith("train_") and v}
        local_task = float(np.mean([float(o["task"]) for o in outputs]))
        t.save_checkpoint(os.path.join(out, "checkpoint.pth"))
        # stage 1 under nnU-Net's own DDP wrapper: its unused lower-resolution heads must not stop the second step
        mae = build("AllStageMAETrainer_1epoch")
        mae.dataloader_train, mae.dataloader_val = mae.get_dataloaders()
        mae_losses = [float(mae.train_step(next(mae.dataloader_train))["loss"]) for _ in range(2)]
        dist.barrier()
        record = {"same_after_step": seen, "teacher_unchanged": not changed(teacher_before, t.teacher),
                  "teacher_wrapped": type(t.teacher).__name__, "student_wrapped": type(t.network).__name__,
                  "recovery_wrapped": type(t.recovery).__name__, "logged": logged, "local_task": local_task,
                  "batch_size": t.batch_size, "device": str(t.device), "mae_losses": mae_losses,
                  "mae_wrapped": type(mae.network).__name__}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(record, f, default=float)
    finally:
        dist.destroy_process_group()


def private_api_epoch_log(trainer):
    from nnunet_allstage.private_api import epoch_log
    return epoch_log(trainer.logger)


def test_stage4_under_ddp_with_gloo_on_the_cpu(dataset, tmp_path):
    """Two processes: student and g identical on both ranks after every step, the teacher neither wrapped nor
    changed, the epoch's loss terms the mean over ranks, one checkpoint, nnU-Net's per-rank batch; stage 1 takes
    two steps under nnU-Net's own DDP wrapper (before the fix its unused heads stopped the second)."""
    import json
    import torch.multiprocessing as mp
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_stage4_worker, args=(2, str(tmp_path / "init"), str(out), 3), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["device"] == "cpu" and r["batch_size"] == 1  # the planned batch of 2, split over 2 ranks
        assert all(step["student"] and step["g"] for step in r["same_after_step"]), r["same_after_step"]
        assert r["teacher_unchanged"] and r["teacher_wrapped"] == "HyperSegNetwork"
        assert r["student_wrapped"] == "DistributedDataParallel" and r["recovery_wrapped"] == "DistributedDataParallel"
    assert ranks[0]["logged"] == ranks[1]["logged"]
    assert ranks[0]["logged"]["train_task_loss"] == pytest.approx((ranks[0]["local_task"] + ranks[1]["local_task"]) / 2)
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint.pth"]
    assert all(r["mae_wrapped"] == "DistributedDataParallel" and np.isfinite(r["mae_losses"]).all() for r in ranks)


# ---------------------------------------------------------------- training cases without labels
@pytest.fixture(scope="module")
def unlabelled(unlabelled_workspace):
    """The dataset with cases that have no labels, untrained predecessors saved where each stage looks."""
    mp = pytest.MonkeyPatch()
    unlabelled_workspace.use(mp)
    mp.setenv("nnUNet_n_proc_DA", "0")
    for name in ("AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch", "AllStageMAEDATrainer_1epoch"):
        t = build(name, UNLABELLED_DATASET_ID)
        t.save_checkpoint(os.path.join(t.output_folder, "checkpoint_final.pth"))
    from nnunet_allstage.modalities import read_availability
    yield set(read_availability(unlabelled_workspace.raw)["unlabelled"])
    mp.undo()


@pytest.mark.parametrize("name, sees_unlabelled", [
    ("AllStageMAETrainer_1epoch", True), ("AllStageMAEDATrainer_1epoch", True),
    ("AllStageHyperTrainer_1epoch", False), ("AllStageTrainer_1epoch", False), ("AllStageDropoutTrainer_1epoch", False),
    ("AllStageMAEFinetuneTrainer_1epoch", False),
])
def test_which_cases_each_trainer_samples(unlabelled, name, sees_unlabelled):
    """The self-supervised stages sample every training case; the segmentation stages and the baseline never
    sample one without labels (it is not among the cases their loader draws from), and their batches show it."""
    assert len(unlabelled) == 3
    t = build(name, UNLABELLED_DATASET_ID)
    train, val = t.get_tr_and_val_datasets()
    assert not set(val.identifiers) & unlabelled
    assert (unlabelled <= set(train.identifiers)) if sees_unlabelled else not (set(train.identifiers) & unlabelled)
    t.dataloader_train, t.dataloader_val = t.get_dataloaders()
    seen = set()
    for _ in range(25):
        seen |= {str(k) for k in next(t.dataloader_train)["keys"]}
        if sees_unlabelled and seen & unlabelled:
            break
    assert bool(seen & unlabelled) == sees_unlabelled, seen


def test_stage3_segmentation_term_counts_labelled_samples_only(unlabelled):
    t = build("AllStageMAEDATrainer_1epoch", UNLABELLED_DATASET_ID)
    t.load_predecessors()
    mae = Recorder(t.network)
    labelled = sorted(set(t._availability_record["cases"]) - unlabelled)
    t.dataloader_train, t.dataloader_val = t.get_dataloaders()
    batch = next(t.dataloader_train)
    # every sample without labels: no segmentation term, no error, the reconstruction term as ever
    batch["keys"] = [sorted(unlabelled)[0]] * batch["data"].shape[0]
    out = t.train_step(batch)
    assert float(out["seg"]) == 0.0 and float(out["rec"]) > 0 and np.isfinite(float(out["loss"]))
    # one labelled sample, one not: L_seg is the loss of the teacher on the labelled sample's reconstruction alone
    batch = next(t.dataloader_train)
    batch["keys"] = [labelled[0], sorted(unlabelled)[0]]
    target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
    out = t.train_step(batch)
    reconstruction = mae.outputs[-1]
    with torch.no_grad():
        expected = t.loss(t.teacher_forward(reconstruction[:1])[0], target[:1])
    assert float(out["seg"]) == pytest.approx(float(expected), rel=1e-5)


def test_a_fold_of_unlabelled_cases_only_is_refused_by_the_segmentation_trainers(unlabelled):
    from nnunet_allstage.errors import AllStageError
    t = build("AllStageHyperTrainer_1epoch", UNLABELLED_DATASET_ID)
    t.unlabelled_cases = frozenset(t._availability_record["cases"])
    with pytest.raises(AllStageError, match="every training case of fold 0 is unlabelled.*--labelled-fraction"):
        t.do_split()
    mae = build("AllStageMAETrainer_1epoch", UNLABELLED_DATASET_ID)
    mae.unlabelled_cases = frozenset(mae._availability_record["cases"])
    assert mae.do_split()[0]  # the MAE needs no label
