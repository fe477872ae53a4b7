"""README's layout section matches the tree, and every trainer class name is written out (a grep finds it)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def layout_block() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", text, re.S).group(1)


def test_every_name_in_the_layout_exists_and_every_module_is_named():
    block = layout_block()
    names = set(re.findall(r"[A-Za-z_][\w.-]*\.py|[A-Za-z_][\w-]*/", block))
    files = {p.name for p in REPO.rglob("*.py") if ".venv" not in p.parts} | \
            {p.name + "/" for p in REPO.rglob("*") if p.is_dir() and ".venv" not in p.parts}
    assert not sorted(n for n in names if n not in files), "README layout names what the tree does not have"
    package = REPO / "nnunet_allstage"
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"} | \
              {p.name + "/" for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert not sorted(modules - names), "README layout misses these parts of nnunet_allstage"
    for folder in ("training", "conversion", "cli"):
        inner = {p.name for p in (package / folder).glob("*.py") if not p.name.startswith("__")}
        assert not sorted(inner - names), f"README layout misses modules of nnunet_allstage/{folder}"
    for top in ("dataset_conversion/", "trainers/", "scripts/", "tests/", "nnunet_allstage/"):
        assert top in names


def test_every_trainer_is_written_out_and_its_schedule_comes_from_the_class():
    import inspect
    import re
    from nnunet_allstage.training import SCHEDULES, schedule_suffix, trainer_classes
    classes = trainer_classes()
    full = {name for name, cls in classes.items() if cls.schedule_epochs is None}
    assert len(full) == 19 and len(classes) == 19 * (1 + len(SCHEDULES))
    for name, cls in classes.items():
        source = Path(inspect.getsourcefile(cls)).read_text()
        assert re.search(rf"^class {name}\(", source, re.M), f"{name} is not written out in {cls.__module__}"
        if cls.schedule_epochs is not None:
            base = name.removesuffix(schedule_suffix(cls.schedule_epochs))
            assert base in full and cls.__bases__ == (classes[base],), name
    for base in full:
        assert {classes[base + "_" + s].schedule_epochs for s in SCHEDULES} == set(SCHEDULES.values())
