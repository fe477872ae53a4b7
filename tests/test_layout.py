"""The layout the documentation describes is the tree's; every trainer class is written out (a grep finds it); the
package's imports have no circle and the commands that run models are leaves over `inference`; every link of the
README and the documentation resolves."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nnunet_allstage"
DOCS = REPO / "documentation"


def layout_block() -> str:
    text = (DOCS / "development.md").read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", text, re.S).group(1)


def test_every_name_in_the_layout_exists_and_every_module_is_named():
    block = layout_block()
    names = set(re.findall(r"[A-Za-z_][\w.-]*\.(?:py|sh|md)|[A-Za-z_][\w-]*/", block))
    files = {p.name for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts} | \
            {p.name + "/" for p in REPO.rglob("*") if p.is_dir() and ".venv" not in p.parts}
    assert not sorted(n for n in names if n not in files), "the layout names what the tree does not have"
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"} | \
              {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert not sorted(modules - names), "the layout misses these parts of nnunet_allstage"
    for folder in ("training", "conversion", "cli"):
        inner = {p.name for p in (PACKAGE / folder).glob("*.py") if not p.name.startswith("__")}
        assert not sorted(inner - names), f"the layout misses modules of nnunet_allstage/{folder}"
    for folder in ("benchmarks", "studies"):
        inner = {p.name for p in (REPO / "scripts" / folder).glob("*.py")}
        assert not sorted(inner - names), f"the layout misses scripts/{folder}"
    for top in ("dataset_conversion/", "trainers/", "scripts/", "tests/", "nnunet_allstage/", "documentation/"):
        assert top in names


def test_every_trainer_is_written_out_and_its_schedule_comes_from_the_class():
    import inspect
    from nnunet_allstage.training import SCHEDULES, schedule_suffix, trainer_classes
    classes = trainer_classes()
    # every class a `class AllStage...(` line of the training modules defines, counted in their text
    defined = {m for path in (PACKAGE / "training").glob("*.py")
               for m in re.findall(r"^class (AllStage\w+)\(", path.read_text(), re.M)}
    assert set(classes) == defined - {"AllStageTrainerBase"}
    full = {name for name, cls in classes.items() if cls.schedule_epochs is None}
    for name, cls in classes.items():
        source = Path(inspect.getsourcefile(cls)).read_text()
        assert re.search(rf"^class {name}\(", source, re.M), f"{name} is not written out in {cls.__module__}"
        if cls.schedule_epochs is not None:
            base = name.removesuffix(schedule_suffix(cls.schedule_epochs))
            assert base in full and cls.__bases__ == (classes[base],), name
    for base in full:
        assert {classes[base + "_" + s].schedule_epochs for s in SCHEDULES} == set(SCHEDULES.values())


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """{module: package modules it imports}, module-level and function-level imports alike (relative ones too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    base = ".".join(package + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the deepest package module the import names
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def test_no_import_circles_and_commands_are_leaves_over_inference():
    graph = package_imports()

    def reaches(start: str, goal: str, seen=None) -> bool:
        seen = seen or set()
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False
    circles = [(a, b) for a in graph for b in graph[a] if reaches(b, a)]
    assert not circles, f"import circles: {circles}"
    leaves = ["nnunet_allstage.prediction", "nnunet_allstage.synthesis", "nnunet_allstage.evaluation",
              "nnunet_allstage.expected_accuracy"]
    for leaf in leaves:
        assert "nnunet_allstage.inference" in graph[leaf], leaf
        assert not graph[leaf] & set(leaves), f"{leaf} imports {graph[leaf] & set(leaves)}"
    assert not graph["nnunet_allstage.inference"] & set(leaves)
    # nothing below the commands imports them (only the CLI and the demo use them)
    users = {m for m, imported in graph.items() if imported & set(leaves)}
    assert users <= {"nnunet_allstage.cli.model", "nnunet_allstage.demo"}, users
    # every network is built in networks.py; the trainers ask it
    for path in PACKAGE.rglob("*.py"):
        if path.name != "networks.py":
            assert "nnUNetTrainer.build_network_architecture(" not in path.read_text(), path


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.name)
def test_every_link_resolves(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor and resolved.suffix == ".md":
            headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                        for h in re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)}
            assert anchor in headings, f"{page.name}: no heading #{anchor} in {resolved.name}"
    assert "../shared" not in text and "METHOD.md" not in text, f"{page.name} points outside a user's clone"


def test_readme_is_short_and_nothing_speaks_of_work_sessions():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    texts = [p for p in [*markdown_files(), *PACKAGE.rglob("*.py"), *(REPO / "scripts").rglob("*.py"),
                         *(REPO / "tests").rglob("*.py"), *(REPO / "dataset_conversion").glob("*.py")]]
    for path in texts:
        found = re.search(r"issue [0-9]+", path.read_text(), re.I)
        assert not found, f"{path.relative_to(REPO)}: {found.group(0)!r}"
