"""Imports flow one way: objectives and models import nothing from the engine, and the
engine's data package has no import cycle (checked on the source, every import statement
included, also those inside functions)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def test_models_and_objectives_import_nothing_from_the_engine():
  for package, forbidden in (("models", ("jaxrl_reward",)), ("objectives", ("jaxrl_reward", "models"))):
    for path in sorted((ROOT / package).glob("*.py")):
      bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
      assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_import_cycle_in_the_data_package():
  package = "jaxrl_reward.data"
  modules = {p.stem: p for p in (ROOT / "jaxrl_reward" / "data").glob("*.py") if p.stem != "__init__"}
  graph = {name: {m.rsplit(".", 1)[-1] for m in imported_modules(path)
                  if m.startswith(package + ".") and m.rsplit(".", 1)[-1] in modules}
           for name, path in modules.items()}
  visiting, done = set(), set()

  def visit(node, trail):
    assert node not in visiting, f"import cycle in {package}: {' -> '.join(trail + [node])}"
    if node in done:
      return
    visiting.add(node)
    for nxt in graph[node]:
      visit(nxt, trail + [node])
    visiting.discard(node)
    done.add(node)

  for name in graph:
    visit(name, [])
  assert graph["tasks"] >= {"arithmetic", "task"}  # the registry imports its sources, not the reverse
