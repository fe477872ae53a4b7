"""Sub-commands that train and use models: train, validate, predict, synthesize, evaluate, demo."""
from __future__ import annotations

from pathlib import Path

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.training import SCHEDULES


def _device(name: str):
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise AllStageError("-device cuda but no GPU is visible; pass -device cpu")
    return torch.device(name)


def _fold(value: str):
    return value if value == "all" else int(value)


def cmd_train(args) -> None:
    from nnunet_allstage.pipeline import budget_epochs, parse_weights, run_pipeline, stages_for
    epochs = None
    if args.stage_epochs and args.chain_budget:
        raise AllStageError("--stage-epochs and --chain-budget both set the epochs of each stage: give one")
    if args.stage_epochs:
        epochs = [int(e) for e in parse_weights(args.stage_epochs, "--stage-epochs")]
    elif args.chain_budget:
        stages = stages_for(args.dataset_id, args.fold, args.c, args.p, args.schedule, args.baseline, args.binary)
        split = parse_weights(args.split, "--split") if args.split else [1.0] * len(stages)
        epochs = budget_epochs(stages, args.chain_budget, split)
    elif args.split:
        raise AllStageError("--split divides a --chain-budget: give that too")
    run_pipeline(args.dataset_id, args.fold, configuration=args.c, plans=args.p, schedule=args.schedule,
                 baseline=args.baseline, binary=args.binary, device=args.device, num_gpus=args.num_gpus,
                 extra_args=args.nnunet_args, stage_epochs=epochs)
    if args.fold == "all" or args.no_validate:
        return
    final = stages_for(args.dataset_id, args.fold, args.c, args.p, args.schedule, args.baseline, args.binary)[-1]
    args.tr, args.checkpoint, args.disable_tta = final.trainer, "checkpoint_final.pth", False
    cmd_validate(args)


def cmd_validate(args) -> None:
    from nnunet_allstage.expected_accuracy import measure
    from nnunet_allstage.environment import dataset_name_from_id
    model = _load_models(args, [args.tr])[0]
    measure(model, dataset_name_from_id(args.dataset_id), _fold(args.fold))


def _load_models(args, trainers: list[str]):
    from nnunet_allstage.environment import model_folder
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.environment import dataset_name_from_id
    name = dataset_name_from_id(args.dataset_id)
    device = _device(args.device)
    return [load_model(model_folder(name, tr, args.p, args.c), _fold(args.fold), args.checkpoint, device,
                       not args.disable_tta, tr) for tr in trainers]


def cmd_predict(args) -> None:
    from nnunet_allstage.prediction import predict_folder
    model = _load_models(args, [args.tr])[0]
    year = args.brats_labels
    status = predict_folder(model, Path(args.i), Path(args.o),
                            brats_labels_year=None if year is None else _brats_year(year, Path(args.i)))
    if all(s != "ok" for s in status.values()):
        raise AllStageError("no case could be predicted")


def _brats_year(value: str, folder: Path) -> str:
    if value != "auto":
        return value
    from nnunet_allstage.conversion.sources import detect_brats_year
    try:
        return detect_brats_year(folder)
    except AllStageError:
        raise AllStageError("--brats-labels without a year needs BraTS-named input; pass --brats-labels 2021 "
                            "(labels 1/2/4) or --brats-labels 2023 (labels 1/2/3)") from None


def cmd_evaluate(args) -> None:
    from nnunet_allstage.environment import dataset_name_from_id, nnunet_folder
    from nnunet_allstage.evaluation import evaluate, find_test_cases, parse_combinations
    from nnunet_allstage.modalities import modality_names_from_dataset_json
    trainers = args.tr or ["AllStageTrainer"]
    models = _load_models(args, trainers)
    dj = models[0].predictor.dataset_json
    names = modality_names_from_dataset_json(dj)
    name = dataset_name_from_id(args.dataset_id)
    raw = nnunet_folder("nnUNet_raw") / name
    images = Path(args.images) if args.images else raw / "imagesTs"
    labels = Path(args.labels) if args.labels else raw / "labelsTs"
    cases = find_test_cases(images, labels, dj["file_ending"], len(names))
    out = Path(args.o) if args.o else nnunet_folder("nnUNet_results") / name / f"allstage_evaluation_fold{args.fold}"
    evaluate(models, cases, parse_combinations(args.combinations, names), out, args.save_segmentations,
             metrics=args.metrics)


def cmd_synthesize(args) -> None:
    from nnunet_allstage.environment import dataset_name_from_id, model_folder
    from nnunet_allstage.synthesis import evaluate_synthesis, load_synthesizer, synthesize_folder
    folder = model_folder(dataset_name_from_id(args.dataset_id), args.tr, args.p, args.c)
    synth = load_synthesizer(folder, _fold(args.fold), args.checkpoint, _device(args.device))
    if args.evaluate:
        evaluate_synthesis(synth, Path(args.i), Path(args.o))
    else:
        synthesize_folder(synth, Path(args.i), Path(args.o), with_inputs=args.with_inputs)


def cmd_demo(args) -> None:
    from nnunet_allstage.demo import run_demo
    run_demo(Path(args.workdir), num_cases=args.num_cases, num_processes=args.np)


def _model_options(p, several: bool = False) -> None:
    p.add_argument("-d", dest="dataset_id", type=int, required=True)
    p.add_argument("-f", dest="fold", default="0", help="fold (or 'all'), default 0")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="plans name")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    if several:
        p.add_argument("-tr", nargs="+", help="trainer(s) to compare (default AllStageTrainer), e.g. "
                                              "AllStageTrainer AllStageDropoutTrainer nnUNetTrainer")
    else:
        p.add_argument("-tr", default="AllStageTrainer")


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="the four stages in order (each skipped when done, continued when interrupted)")
    p.add_argument("-d", dest="dataset_id", type=int, required=True)
    p.add_argument("-f", dest="fold", default="0")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("-num_gpus", type=int, default=1)
    p.add_argument("--schedule", default="", choices=["", *SCHEDULES],
                   help="short variants for quick runs")
    p.add_argument("--baseline", action="store_true", help="train the nnU-Net + modality dropout baseline instead")
    p.add_argument("--binary", action="store_true", help="binary-code encoder instead of CLIP (needs no CLIP)")
    p.add_argument("--chain-budget", type=float, metavar="EPOCHS",
                   help="the whole chain's cost in epochs of stock nnU-Net (1000 is one stock training), divided "
                        "over the stages by --split (default: the same epochs in each stage)")
    p.add_argument("--split", metavar="A:B:C:D", help="relative epochs of stages 1-4 within --chain-budget")
    p.add_argument("--stage-epochs", metavar="E1:E2:E3:E4", help="the epochs of each stage, given directly")
    p.add_argument("--no-validate", action="store_true",
                   help="skip measuring the final model's expected accuracy per combination on the fold's "
                        "validation cases (what `validate` does)")
    p.add_argument("nnunet_args", nargs="*", help="passed to nnUNetv2_train after --, e.g. -- --npz")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="expected Dice/HD95 per input combination on the fold's validation cases, "
                                        "stored beside the checkpoint and quoted by predict")
    _model_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("predict", help="predict cases that lack some modality files")
    p.add_argument("-i", required=True, help="nnU-Net-named files, or one folder per case in BraTS naming")
    p.add_argument("-o", required=True)
    _model_options(p)
    p.add_argument("--brats-labels", nargs="?", const="auto", default=None, metavar="YEAR",
                   help="write BraTS label values (1/2/4 up to 2021, 1/2/3 from 2023; year detected from BraTS "
                        "naming when omitted)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice/HD95 over all input combinations (paper Table 1)")
    _model_options(p, several=True)
    p.add_argument("--images", help="test images (default: the dataset's imagesTs)")
    p.add_argument("--labels", help="test labels (default: the dataset's labelsTs)")
    p.add_argument("--combinations", default="all", help="'all' or e.g. 'FLAIR,T1c+T2'")
    p.add_argument("-o", help="output folder (default nnUNet_results/DatasetX/allstage_evaluation_foldF)")
    p.add_argument("--save-segmentations", action="store_true")
    p.add_argument("--metrics", choices=["paper", "lesionwise", "both"], default="paper",
                   help="the paper's case-wise Dice/HD95, the BraTS challenges' lesion-wise ones (official "
                        "brats-evaluation package: pip install \"nnunet-allstage[brats]\"), or both")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synthesize", help="write the sequences each case lacks, made by the final model's recovering "
                                          "module (or, with --evaluate, measure them against real ones)")
    p.add_argument("-i", required=True, help="nnU-Net-named files, or one folder per case in BraTS naming")
    p.add_argument("-o", required=True)
    _model_options(p)
    p.add_argument("--with-inputs", action="store_true",
                   help="copy the real sequences too, so that -o holds complete cases (synthesized.json marks "
                        "which files are synthetic)")
    p.add_argument("--evaluate", action="store_true",
                   help="on cases with every sequence: drop each combination in turn, synthesize, and report "
                        "PSNR/SSIM inside the brain per sequence and combination (table and picture)")
    p.set_defaults(func=cmd_synthesize, disable_tta=True)

    p = sub.add_parser("demo", help="synthetic end-to-end run on the CPU (minutes)")
    p.add_argument("--workdir", default="demo_output", help="where data, nnU-Net folders and results go")
    p.add_argument("-n", "--num-cases", type=int, default=12)
    p.add_argument("-np", type=int, default=2)
    p.set_defaults(func=cmd_demo)
