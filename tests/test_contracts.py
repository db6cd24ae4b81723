"""The generated code in libs/contracts is what `make proto` writes from proto/ today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "libs" / "contracts" / "src" / "parley" / "v1"


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    bin_dir = str(Path(sys.executable).parent)
    import os

    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    gen.generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "parley" / "v1").iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for p in GENERATED.iterdir()
        if p.is_file() and p.name not in ("__init__.py", "py.typed")
    }
    assert sorted(fresh) == sorted(committed), "run `make proto` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale: {stale}; run `make proto` and commit the result"
