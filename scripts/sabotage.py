#!/usr/bin/env python3
"""Switch off each guarantee's mechanism in turn and check that its tests notice.

For every entry of ``tests/sabotages.py`` this runs that entry's tests with the one mechanism
switched off (``DLMAN_SABOTAGE=<name>``, applied in the test process by ``tests/conftest.py``
and in every Python process the tests start through a ``sitecustomize`` on ``PYTHONPATH``) and
reports the tests that still pass. A sabotage that no test notices is a failure: exit 1.

    python scripts/sabotage.py                 # every mechanism
    python scripts/sabotage.py takeover nofollow
    python scripts/sabotage.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sabotages  # noqa: E402

_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+)", re.MULTILINE)


def run(sabotage: sabotages.Sabotage, site: Path, timeout: float) -> tuple[list[str], list[str], str]:
    """The tests that passed and those that did not, with the sabotage in force."""
    env = dict(os.environ)
    env[sabotages.ENV] = sabotage.name
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "",
               "--timeout", "30", *sabotage.tests]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        return [], list(sabotage.tests), f"timed out after {timeout:.0f}s: {exc}"
    passed = [name for outcome, name in _OUTCOME.findall(output) if outcome in ("PASSED", "XPASS")]
    failed = [name for outcome, name in _OUTCOME.findall(output) if outcome in ("FAILED", "ERROR")]
    return passed, failed, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="sabotages to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the sabotages and their tests")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per sabotage")
    args = parser.parse_args()
    chosen = [sabotages.by_name(n) for n in args.names] if args.names else list(sabotages.CATALOGUE)
    if args.list:
        for sabotage in chosen:
            print(f"{sabotage.name}: {sabotage.what}")
            for test in sabotage.tests:
                print(f"    {test}")
        return 0
    uncaught = []
    with tempfile.TemporaryDirectory(prefix="dlman-sabotage-") as temp:
        site = Path(temp)
        (site / "sitecustomize.py").write_text(
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "import sabotages\n"
            "sabotages.apply_from_environment()\n")
        for sabotage in chosen:
            began = time.monotonic()
            passed, failed, output = run(sabotage, site, args.timeout)
            took = time.monotonic() - began
            verdict = "caught" if failed else "NOT CAUGHT"
            print(f"{sabotage.name:22} {verdict:11} {len(failed)} failed, {len(passed)} still pass "
                  f"({took:.0f}s): {sabotage.what}", flush=True)
            for name in passed:
                print(f"    still passes: {name}")
            if not failed:
                uncaught.append(sabotage.name)
                print("    " + "\n    ".join(output.strip().splitlines()[-15:]))
    if uncaught:
        print(f"\n{len(uncaught)} sabotage(s) not caught by any test: {', '.join(uncaught)}")
        return 1
    print(f"\nall {len(chosen)} sabotages caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
