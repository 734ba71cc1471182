"""The Kaggle wheel bundle: dependency closure, pip calls, and a real install in a fresh venv."""

import json
import os
import re
import subprocess
import venv
from pathlib import Path
from types import SimpleNamespace

import pytest
from arena_pref.errors import InputError
from arena_pref.kaggle import wheels
from packaging.utils import canonicalize_name


def fake_metadata(monkeypatch, packages):
    """Replace the installed-metadata lookup by ``packages`` {canonical name: (version, requires)};
    the fake answers canonical names only, so a test fails where closure forgets to canonicalise."""

    def lookup(name):
        if name not in packages:
            return None
        version, requires = packages[name]
        return SimpleNamespace(version=version, requires=requires, read_text=lambda _: None)

    monkeypatch.setattr(wheels, "_distribution", lookup)


def test_markers_for_other_pythons_and_platforms_are_dropped(monkeypatch):
    fake_metadata(
        monkeypatch,
        {
            "app": (
                "1.0",
                [
                    "lib>=1",
                    'old; python_version < "3.0"',
                    'win; sys_platform == "win32"',
                    'posix; sys_platform != "win32"',
                    'new; python_version >= "3.8"',
                ],
            ),
            "lib": ("2.0", None),
            "posix": ("1.1", []),
            "new": ("0.3", []),
        },
    )
    # "old" and "win" are not installed: following them would be an error
    assert wheels.closure(["app"]) == {"app": "1.0", "lib": "2.0", "new": "0.3", "posix": "1.1"}


def test_marker_env_overrides_the_python_version(monkeypatch):
    fake_metadata(monkeypatch, {"app": ("1", ['tomli; python_version < "3.11"']), "tomli": ("2", [])})
    assert wheels.closure(["app"], marker_env={"python_version": "3.10"}) == {"app": "1", "tomli": "2"}
    assert wheels.closure(["app"], marker_env={"python_version": "3.12"}) == {"app": "1"}


def test_extras_are_followed_only_where_requested(monkeypatch):
    fake_metadata(
        monkeypatch,
        {
            "app": ("1", ["lib", "other"]),
            "other": ("1", ["lib[Fast]"]),  # a later request adds an extra to an already seen lib
            "lib": ("1", ['speedup; extra == "fast"', 'slowdown; extra == "slow"', "base"]),
            "speedup": ("1", []),
            "base": ("1", []),
            "tool": ("1", ['plug; extra == "cli"']),
            "plug": ("1", []),
        },
    )
    assert set(wheels.closure(["app"])) == {"app", "other", "lib", "speedup", "base"}
    assert set(wheels.closure(["tool"])) == {"tool"}
    assert set(wheels.closure(["tool[cli]"])) == {"tool", "plug"}


def test_exclusion_stops_the_traversal(monkeypatch):
    fake_metadata(
        monkeypatch,
        {
            "app": ("1", ["torch", "nvidia-cublas-cu12", "lib"]),
            "torch": ("2", ["needs-cuda"]),  # needs-cuda is not installed: must not be looked at
            "lib": ("1", []),
            "nvidia-cublas-cu12": ("12", ["needs-cuda"]),
        },
    )
    assert wheels.closure(["app"], ["Torch", "nvidia-*"]) == {"app": "1", "lib": "1"}
    # a named distribution that is excluded is simply not bundled
    assert wheels.closure(["app", "torch"], ["torch", "nvidia-*"]) == {"app": "1", "lib": "1"}


def test_names_are_canonicalised(monkeypatch):
    fake_metadata(
        monkeypatch,
        {
            "app": ("1", ["Foo_Bar>=1", "foo.bar", "Excluded_Pkg"]),
            "foo-bar": ("3", []),
        },
    )
    assert wheels.closure(["App"], ["excluded.pkg"]) == {"app": "1", "foo-bar": "3"}
    assert wheels.image_requirements(["App"], ["EXCLUDED-pkg"]) == {"excluded-pkg": ["excluded-pkg (app)"]}


def test_cycles_end(monkeypatch):
    fake_metadata(monkeypatch, {"a": ("1", ["b"]), "b": ("1", ["c[x]"]), "c": ("1", ["a", 'b; extra == "x"'])})
    assert wheels.closure(["a"]) == {"a": "1", "b": "1", "c": "1"}


def test_result_is_sorted(monkeypatch):
    fake_metadata(monkeypatch, {"zeta": ("1", ["alpha", "mid"]), "alpha": ("1", []), "mid": ("1", [])})
    assert list(wheels.closure(["zeta"])) == ["alpha", "mid", "zeta"]


def test_not_installed_named_distribution_is_an_input_error(monkeypatch):
    fake_metadata(monkeypatch, {"app": ("1", [])})
    with pytest.raises(InputError, match="not installed.*nonesuch"):
        wheels.closure(["app", "nonesuch"])


def test_missing_dependency_is_an_error_or_a_warning(monkeypatch, caplog):
    fake_metadata(monkeypatch, {"app": ("1", ["lib", "gone>=2"]), "lib": ("1", ["gone"])})
    with pytest.raises(InputError, match=r"gone \(required by app, lib\)"):
        wheels.closure(["app"])
    with caplog.at_level("WARNING"):
        assert wheels.closure(["app"], on_missing="warn") == {"app": "1", "lib": "1"}
    assert "gone (required by app, lib)" in caplog.text


def test_unmet_version_requirement_is_logged(monkeypatch, caplog):
    fake_metadata(monkeypatch, {"app": ("1", ["lib<2"]), "lib": ("2.5", [])})
    with caplog.at_level("WARNING"):
        assert wheels.closure(["app"]) == {"app": "1", "lib": "2.5"}
    assert "app requires lib<2, but 2.5 is installed" in caplog.text


def test_real_snakemake_closure_without_the_image():
    pins = wheels.closure(["snakemake"], wheels.image_exclude())
    assert "snakemake-interface-common" in pins and "snakemake" in pins
    assert not {"torch", "numpy", "pandas", "pyyaml", "requests"} & set(pins)
    assert all(name == canonicalize_name(name) for name in pins)


def test_image_list_keeps_what_our_code_relies_on_bundled():
    excluded = wheels.image_exclude()
    assert {
        "torch",
        "nvidia-*",
        "triton",
        "numpy",
        "pandas",
        "scipy",
        "scikit-learn",
        "pyarrow",
        "pyyaml",
        "requests",
        "matplotlib",
        "jinja2",
        "markupsafe",
        "psutil",
        "packaging",
        "tqdm",
    } <= set(excluded)
    is_excluded = wheels._excluder(excluded)
    for name in [
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "bitsandbytes",
        "snakemake",
        "snakemake-interface-common",
        "arena-pref",
    ]:
        assert not is_excluded(name), name
    assert is_excluded("nvidia-cudnn-cu12") and not is_excluded("nvidia")


def test_default_closure_bundles_the_workflow_but_not_the_image():
    pins = wheels.closure(list(wheels.DEFAULT_NAMES), wheels.image_exclude())
    assert {"snakemake", "transformers", "peft", "bitsandbytes", "arena-pref", "typing-extensions"} <= set(pins)
    assert "snakemake-executor-plugin-slurm" not in pins
    assert not any(n.startswith(("torch", "nvidia", "numpy")) for n in pins)


def test_platform_tags_include_older_manylinux():
    tags = wheels._platform_tags("manylinux_2_35_x86_64")
    assert tags[0] == "manylinux_2_35_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_36_x86_64" not in tags and not any("aarch64" in t for t in tags)
    assert wheels._platform_tags(["linux_x86_64"]) == ["linux_x86_64"]
    assert wheels._platform_tags(None) == []
    assert wheels._target_args("3.12", None) == ["--python-version", "3.12", "--implementation", "cp"]
    assert wheels._marker_env("3.12", "manylinux2014_aarch64") == {
        "python_version": "3.12",
        "python_full_version": "3.12.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64",
    }


def _fake_pip(monkeypatch, calls, fail=None):
    """pip stand-in: download/wheel write empty wheel files named after the requirements."""

    def pip(args, what, names, check=True):
        calls.append(args)
        if fail:
            raise InputError(f"pip {what} failed for {fail}")
        dest = Path(args[args.index("-d" if what == "download" else "-w") + 1])
        for req in [a for a in args if "==" in a]:
            name, version = req.split("==")
            (dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(name.encode())
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(wheels, "_pip", pip)


def test_collect_writes_pins_manifest_and_one_download_call(monkeypatch, tmp_path):
    fake_metadata(
        monkeypatch, {"app": ("1.0", ["Foo_Bar", "torch", "own"]), "foo-bar": ("2.0", []), "own": ("0.1.0", [])}
    )
    monkeypatch.setattr(wheels, "_local_source", lambda d: None)
    calls = []
    _fake_pip(monkeypatch, calls)
    out = tmp_path / "wheels"
    manifest = wheels.collect(["app", "own"], ["torch"], out, project_dir=tmp_path)
    assert len(calls) == 1 and calls[0][0] == "download" and "--no-deps" in calls[0]
    assert {"app==1.0", "foo-bar==2.0", "own==0.1.0"} <= set(calls[0])  # own is not arena-pref
    assert (out / "requirements.txt").read_text() == "app==1.0\nfoo-bar==2.0\nown==0.1.0\n"
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["image_requirements"] == {"torch": ["torch (app)"]}
    entry = manifest["wheels"][1]
    assert entry["name"] == "foo-bar" and entry["filename"] == "foo_bar-2.0-py3-none-any.whl"
    assert entry["size"] == len(b"foo-bar") and len(entry["sha256"]) == 64


def test_collect_builds_local_projects_and_keeps_the_old_bundle_on_failure(monkeypatch, tmp_path):
    fake_metadata(monkeypatch, {"app": ("1.0", ["arena-pref"]), "arena-pref": ("0.1.0", [])})
    monkeypatch.setattr(wheels, "_local_source", lambda d: None)
    monkeypatch.setattr(
        wheels,
        "_build",
        lambda name, source, dest: (
            calls.append(("build", name, source))
            or (Path(dest) / "arena_pref-0.1.0-py3-none-any.whl").write_bytes(b"x")
        ),
    )
    calls = []
    _fake_pip(monkeypatch, calls)
    out = tmp_path / "wheels"
    wheels.collect(["app"], [], out, project_dir="/src/arena")
    assert calls[0][-1] == "app==1.0" and calls[1] == ("build", "arena-pref", "/src/arena")
    assert (out / "requirements.txt").read_text() == "app==1.0\narena-pref==0.1.0\n"
    _fake_pip(monkeypatch, [], fail="app")
    with pytest.raises(InputError, match="pip download failed for app"):
        wheels.collect(["app"], [], out, project_dir="/src/arena")
    assert (out / "requirements.txt").read_text() == "app==1.0\narena-pref==0.1.0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["wheels"]  # no temporary directory left


def _sdist_only_pip(monkeypatch, calls, built_tag="py3-none-any"):
    """pip stand-in whose index has no wheel of b==1 (an sdist only) and fails on x==9."""

    def pip(args, what, names, check=True):
        calls.append(args)
        reqs = [a for a in args if "==" in a]
        if args[0] == "download" and ("b==1" in reqs or "x==9" in reqs):
            bad = "b==1" if "b==1" in reqs else "x==9"
            return SimpleNamespace(
                returncode=1,
                stdout="",
                stderr=f"ERROR: No matching distribution found for {bad}\n"
                if bad == "b==1"
                else "ERROR: HTTP error 503 while getting x\n",
            )
        dest = Path(args[args.index("-d" if args[0] == "download" else "-w") + 1])
        for req in reqs:
            name, version = req.split("==")
            tag = built_tag if args[0] == "wheel" else "py3-none-any"
            (dest / f"{name}-{version}-{tag}.whl").write_bytes(b"w")
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(wheels, "_pip", pip)


def test_a_version_without_a_wheel_is_built_from_its_sdist(monkeypatch, tmp_path):
    fake_metadata(monkeypatch, {"a": ("1", ["b", "c"]), "b": ("1", []), "c": ("2", []), "x": ("9", [])})
    monkeypatch.setattr(wheels, "_local_source", lambda d: None)
    calls = []
    _sdist_only_pip(monkeypatch, calls)
    manifest = wheels.collect(["a"], [], tmp_path / "w")
    assert [c[0] for c in calls] == ["download", "download", "wheel"]
    assert "b==1" not in calls[1] and calls[2][-1] == "b==1"
    assert (tmp_path / "w" / "requirements.txt").read_text() == "a==1\nb==1\nc==2\n"
    assert manifest["built_here"] == ["b"]
    # for another interpreter, a wheel built here must be pure Python
    _sdist_only_pip(monkeypatch, [], built_tag="cp311-cp311-linux_x86_64")
    with pytest.raises(InputError, match="b-1-cp311-cp311-linux_x86_64.whl: built from its sdist"):
        wheels.collect(["a"], [], tmp_path / "w2", python_version="3.12")
    with pytest.raises(InputError, match="pip download failed for x:\nERROR: HTTP error 503"):
        wheels.collect(["x"], [], tmp_path / "w3")  # any other pip failure stops


def test_pip_failure_names_the_package(monkeypatch):
    def run(cmd, **kwargs):
        err = (
            "WARNING: Location 'file:///opt/x/simple/hf-xet/' is ignored: it is neither a file nor a directory.\n"
            "ERROR: Could not find a version that satisfies the requirement huggingface_hub==9.9\n"
            "ERROR: No matching distribution found for huggingface_hub==9.9\n"
        )
        return SimpleNamespace(returncode=1, stdout="Collecting hf-xet==1.0\n", stderr=err)

    monkeypatch.setattr(wheels.subprocess, "run", run)
    with pytest.raises(InputError) as err:
        wheels._pip(["download", "huggingface-hub==9.9", "hf-xet==1.0"], "download", ["huggingface-hub", "hf-xet"])
    assert "pip download failed for huggingface-hub:" in str(err.value)
    assert "No matching distribution found for huggingface_hub==9.9" in str(err.value)
    assert "is ignored" not in str(err.value)


def test_local_source_reads_direct_url():
    def dist(info):
        return SimpleNamespace(read_text=lambda name: json.dumps(info) if info else None)

    assert wheels._local_source(dist(None)) is None
    assert (
        wheels._local_source(dist({"url": "file:///work/my%20proj", "dir_info": {"editable": True}})) == "/work/my proj"
    )
    assert (
        wheels._local_source(dist({"url": "https://github.com/o/r", "vcs_info": {"vcs": "git", "commit_id": "abc"}}))
        == "git+https://github.com/o/r@abc"
    )
    real = wheels._local_source(wheels._distribution("arena-pref"))
    assert real and Path(real, "pyproject.toml").is_file()


def test_copy_project_takes_what_git_would_commit(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "pkg").mkdir(parents=True)
    (src / ".gitignore").write_text("/build/\nresults/\n")
    (src / "pkg" / "tracked.py").write_text("a")
    (src / "pkg" / "deleted.py").write_text("b")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "."], check=True)
    (src / "pkg" / "deleted.py").unlink()  # in the index, gone from the work tree
    (src / "pkg" / "new.py").write_text("c")  # not committed yet: the wheel needs it
    (src / "build" / "lib").mkdir(parents=True)
    (src / "build" / "lib" / "stale.py").write_text("d")
    wheels._copy_project(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        ".gitignore",
        "pkg/new.py",
        "pkg/tracked.py",
    ]


def _isolated_env():
    """Environment for the fresh venv's pip: no pip configuration (this machine's find-links and
    extra indexes would hide a missing wheel), no PYTHONPATH (imports must come from the wheels)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _unmet_requirements(check_output):
    """{required name: requirer} from ``pip check`` lines; any other line fails the test."""
    unmet = {}
    for line in check_output.strip().splitlines():
        if line.startswith("No broken requirements"):
            continue
        match = re.match(r"(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9._-]+)", line)
        assert match, f"unexpected pip check line: {line}"
        unmet[canonicalize_name(match.group(2))] = match.group(1)
    return unmet


@pytest.mark.slow
def test_bundle_installs_offline_in_a_fresh_venv(tmp_path):
    """A real bundle (pip download + our package built from the repo) installs with --no-index
    in a venv without site packages, and pip check finds nothing missing but excluded packages."""
    heavy = ["transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "snakemake"]
    exclude = wheels.image_exclude() + heavy  # keeps the download small: arena-pref's big deps
    names = ["snakemake-interface-common", "yte", "arena-pref"]
    manifest = wheels.collect(names, exclude, tmp_path / "wheels")
    bundled = {w["name"] for w in manifest["wheels"]}
    assert {
        "snakemake-interface-common",
        "argparse-dataclass",
        "configargparse",
        "yte",
        "dpath",
        "arena-pref",
    } <= bundled
    assert len(bundled) == len(list((tmp_path / "wheels").glob("*.whl")))

    venv.create(tmp_path / "venv", with_pip=True, system_site_packages=False)
    py = str(tmp_path / "venv" / "bin" / "python")
    env = _isolated_env()
    # --no-deps: arena-pref requires torch and the heavy ones; pip check below finds every gap
    subprocess.run(
        [
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(tmp_path / "wheels"),
            "-r",
            str(tmp_path / "wheels" / "requirements.txt"),
        ],
        env=env,
        check=True,
        cwd=tmp_path,
    )
    check = subprocess.run([py, "-m", "pip", "check"], env=env, cwd=tmp_path, capture_output=True, text=True)
    unmet = _unmet_requirements(check.stdout)
    is_excluded = wheels._excluder(exclude)
    assert unmet, "pip check should at least miss torch (arena-pref requires it)"
    gaps = {name: requirer for name, requirer in unmet.items() if not is_excluded(name)}
    assert not gaps, f"the bundle misses (name: a requirer): {gaps}"
    assert "torch" in unmet and "has requirement" not in check.stdout

    # our package came from its wheel (not the editable repo) and ships its data files
    where = subprocess.run(
        [
            py,
            "-c",
            "import arena_pref.errors, arena_pref, pathlib; d = pathlib.Path("
            "arena_pref.__file__).parent; print(d, (d / 'kaggle' / 'kaggle_image.yaml').is_file())",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")) and where[1] == "True"
