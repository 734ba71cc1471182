"""Collect the wheels an offline Kaggle notebook needs to run the workflow.

A Kaggle code-competition notebook has no internet: the workflow's packages travel as a dataset
of wheels, installed there with ``pip install --no-index --find-links wheels/ -r
wheels/requirements.txt``. The image already has torch (built for its CUDA), numpy, pandas, ...
(``kaggle_image.yaml``): those are left out. Everything else our distributions need is taken
from *this* environment, pinned to the versions installed here, because those are the versions
the workflow was tested with:

* :func:`closure` walks the installed metadata (requirements with their markers and extras)
  from the named distributions, stopping at the image's packages;
* :func:`collect` fetches one wheel per distribution (``pip download``, or ``pip wheel`` for a
  distribution installed from a local directory, such as our editable arena-pref) and writes
  ``requirements.txt`` and ``manifest.json`` beside them.

Command line: ``python -m arena_pref.kaggle.wheels OUT_DIR [NAMES...]`` (default names:
:data:`DEFAULT_NAMES`; default exclusions: ``kaggle_image.yaml``).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from arena_pref.atomic import atomic_path
from arena_pref.errors import InputError

log = logging.getLogger("arena_pref.kaggle.wheels")  # not __main__ under ``python -m``

DEFAULT_NAMES = (
    "snakemake",
    "peft",
    "bitsandbytes",
    "transformers",
    "tokenizers",
    "accelerate",
    "safetensors",
    "huggingface-hub",
    "arena-pref",
)
"""What the workflow needs on Kaggle (no SLURM executor plugin there: one machine)."""

IMAGE_FILE = Path(__file__).with_name("kaggle_image.yaml")
OWN_NAME = "arena-pref"

# pip's note on each index location that does not exist (file:// mirrors), noise in an error
_PIP_NOISE = re.compile(r"WARNING: Location '.*' is ignored")

# Left out of the copy of a local project when it is not a git work tree (builds from a copy, so
# stale build/ trees and in-tree egg-info never reach the wheel, nor does the build write there).
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".snakemake", "results"
)


def image_exclude(path=IMAGE_FILE):
    """The distribution names (and ``prefix*`` patterns) the Kaggle image provides."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return sorted({name for group in data["groups"].values() for name in group["names"]})


# ---------------------------------------------------------------- the dependency closure


def _distribution(name):
    """The installed distribution called ``name`` (None when absent); tests replace this."""
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _excluder(exclude):
    """Predicate on canonical names: exact names, or a prefix for patterns ending in ``*``."""
    exact = {canonicalize_name(n) for n in exclude if not n.endswith("*")}
    prefixes = [canonicalize_name(n[:-1]) + "*" for n in exclude if n.endswith("*")]
    return lambda name: name in exact or any(fnmatch.fnmatchcase(name, p) for p in prefixes)


def _requirements(dist, extras, env):
    """``dist``'s requirements that apply here: markers evaluated for ``env``, with each of the
    requested ``extras`` (a requirement applies when it holds without or with any of them)."""
    out = []
    for line in dist.requires or ():
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *sorted(extras))):
            out.append(req)
    return out


def _walk(names, exclude, env):
    """Breadth-first walk of the requirements from ``names``.

    Returns (found {name: version}, missing {name: requirers}, image {name: [requirement text]}).
    A (name, extras) pair is expanded once, which ends cycles and still follows an extra that a
    later requirement asks for."""
    excluded = _excluder(exclude)
    found, missing, image, seen = {}, {}, {}, set()
    queue = [(Requirement(n), None) for n in names]
    while queue:
        req, requirer = queue.pop(0)
        name = canonicalize_name(req.name)
        if excluded(name):
            image.setdefault(name, []).append(f"{name}{req.specifier} ({requirer or 'named'})")
            continue
        dist = _distribution(name)
        if dist is None:
            missing.setdefault(name, []).append(requirer)
            continue
        _check_version(req, dist.version, requirer)
        found[name] = dist.version
        key = (name, frozenset(canonicalize_name(e) for e in req.extras))
        if key not in seen:
            seen.add(key)
            queue.extend((r, name) for r in _requirements(dist, key[1], env))
    return found, missing, image


def _check_version(req, version, requirer):
    """A broken environment (a requirement the installed version does not meet) would give a
    bundle pip refuses to install: say so now, while the cause is visible."""
    if requirer and req.specifier and not req.specifier.contains(version, prereleases=True):
        log.warning(
            "%s requires %s, but %s is installed: the bundle pins %s==%s",
            requirer,
            req,
            version,
            canonicalize_name(req.name),
            version,
        )


def closure(names, exclude=(), *, on_missing="error", marker_env=None):
    """{canonical name: installed version}, sorted, of ``names`` and everything they require in
    this environment, minus ``exclude`` (whose own requirements are not followed).

    ``names`` are distribution names, optionally with extras (``"snakemake[reports]"``). A named
    distribution that is not installed is an :class:`InputError`. So, by default
    (``on_missing="error"``), is a required one: markers are already evaluated, so it is a real
    requirement, and a bundle without it fails only later, offline, in the notebook; install it
    here or add it to ``exclude`` if the image has it. ``on_missing="warn"`` logs and skips it.
    ``marker_env`` overrides marker variables (e.g. another ``python_version``)."""
    env = {**default_environment(), **(marker_env or {})}
    excluded = _excluder(exclude)
    absent = [
        n
        for n in names
        if not excluded(canonicalize_name(Requirement(n).name))
        and _distribution(canonicalize_name(Requirement(n).name)) is None
    ]
    if absent:
        raise InputError(f"not installed in this environment ({sys.prefix}): {', '.join(absent)}")
    found, missing, _ = _walk(names, exclude, env)
    if missing:
        what = "; ".join(f"{n} (required by {', '.join(sorted(set(r)))})" for n, r in sorted(missing.items()))
        if on_missing != "warn":
            raise InputError(
                f"required but not installed here, and not excluded: {what}. Install them "
                "here, or exclude them if the Kaggle image provides them"
            )
        log.warning("required but not installed here, left out of the bundle: %s", what)
    return dict(sorted(found.items()))


def image_requirements(names, exclude=(), *, marker_env=None):
    """{excluded name: ["name<spec> (requirer)", ...]}: what the bundle expects from the image,
    for checking against the notebook's ``pip list`` before an offline install fails."""
    env = {**default_environment(), **(marker_env or {})}
    return {n: sorted(set(r)) for n, r in sorted(_walk(names, exclude, env)[2].items())}


# ---------------------------------------------------------------- fetching the wheels


def _local_source(dist):
    """What ``pip wheel`` should build for a distribution not installed from an index (PEP 610
    direct_url.json): a local directory or archive, a VCS commit or a URL; None otherwise."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    url = info["url"]
    if "vcs_info" in info:
        return f"{info['vcs_info']['vcs']}+{url}@{info['vcs_info']['commit_id']}"
    if url.startswith("file:"):
        return urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    return url


def _target_args(python_version, platform):
    """pip options choosing wheels for another interpreter and platform than this one."""
    args = []
    if python_version:
        args += ["--python-version", str(python_version), "--implementation", "cp"]
    for tag in _platform_tags(platform):
        args += ["--platform", tag]
    return args


def _platform_tags(platform):
    """``manylinux_2_35_x86_64`` and the older manylinux tags it runs (pip does not expand them:
    a wheel tagged manylinux2014 would otherwise not match)."""
    tags = [platform] if isinstance(platform, str) else list(platform or ())
    out = []
    for tag in tags:
        out.append(tag)
        head, _, rest = tag.partition("manylinux_2_")
        minor, _, arch = rest.partition("_")
        if head or not minor.isdigit():
            continue
        out += [f"manylinux_2_{m}_{arch}" for m in range(int(minor) - 1, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        out += [f"{name}_{arch}" for m, name in legacy.items() if m <= int(minor)]
    return list(dict.fromkeys(out))


def _marker_env(python_version, platform):
    """Marker variables of the target, where they differ from this interpreter's."""
    env = {}
    if python_version:
        env["python_version"] = ".".join(str(python_version).split(".")[:2])
        env["python_full_version"] = env["python_version"] + ".0"
    tags = _platform_tags(platform)
    match = re.match(r"(?:many|musl)?linux(?:_\d+_\d+|\d+)?_(.+)$", tags[0]) if tags else None
    if match:
        env.update(sys_platform="linux", platform_system="Linux", platform_machine=match.group(1))
    return env


def _pip(args, what, names, *, check=True):
    """Run pip; its failure (with ``check``) is an InputError naming the packages it mentions."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise _pip_error(proc, what, names)
    return proc


def _pip_error(proc, what, names):
    """InputError with pip's last lines, naming the packages its ERROR lines mention (all of
    ``names`` where they name none); pip's notes on unreachable index locations are dropped."""
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if not _PIP_NOISE.match(line)][-12:]
    errors = " ".join(line for line in lines if line.startswith("ERROR")).lower().replace("_", "-")
    named = [n for n in names if re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", errors)]
    tail = "\n".join(lines)
    return InputError(f"pip {what} failed for {', '.join(named or names)}:\n{tail}")


def _download(pins, dest, python_version, platform):
    """One ``pip download`` for all pinned index distributions (one pip start, one resolution).
    A version the index has no wheel of (small projects sometimes publish only an sdist) is set
    aside and pip runs again; returns those, {name: version}, for :func:`_build_sdists`."""
    todo, no_wheel = dict(pins), {}
    t0 = time.perf_counter()
    while todo:
        proc = _pip(
            [
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(dest),
                *_target_args(python_version, platform),
                *(f"{n}=={v}" for n, v in todo.items()),
            ],
            "download",
            list(todo),
            check=False,
        )
        if proc.returncode == 0:
            break
        found = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)==", proc.stderr)
        name = canonicalize_name(found.group(1)) if found else None
        if name not in todo:
            raise _pip_error(proc, "download", list(todo))
        no_wheel[name] = todo.pop(name)
    log.info(
        "pip download: %d wheels in %.1f s (%d versions without a wheel)",
        len(pins) - len(no_wheel),
        time.perf_counter() - t0,
        len(no_wheel),
    )
    return no_wheel


def _build_sdists(pins, dest, cross):
    """Build wheels of ``pins`` from their sdists (the notebook installs wheels only). One that is
    not pure Python was built for this interpreter: an error when the bundle targets another."""
    if not pins:
        return
    log.warning(
        "no wheel on the index for %s: built here from the sdist", ", ".join(f"{n}=={v}" for n, v in pins.items())
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdist-wheels-") as tmp:
        _pip(
            ["wheel", "--no-deps", "-w", tmp, *(f"{n}=={v}" for n, v in pins.items())], "wheel (from sdist)", list(pins)
        )
        for path in sorted(Path(tmp).glob("*.whl")):
            if cross and any(tag.platform != "any" for tag in parse_wheel_filename(path.name)[3]):
                raise InputError(
                    f"{path.name}: built from its sdist for this interpreter, not for the "
                    "target python_version/platform; build it there or exclude it"
                )
            shutil.move(str(path), Path(dest, path.name))
    log.info("pip wheel from sdists: %d wheels in %.1f s", len(pins), time.perf_counter() - t0)


def _copy_project(src, dst):
    """Copy a project directory's source files: those git would commit (tracked and untracked
    but not ignored, that exist), or, outside git, the tree minus build and run leftovers."""
    git = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True
    )
    if git.returncode != 0:
        shutil.copytree(src, dst, ignore=_COPY_IGNORE, symlinks=True)
        return
    for rel in filter(None, git.stdout.decode().split("\0")):
        path = Path(src, rel)
        if path.is_file() or path.is_symlink():
            Path(dst, rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(dst, rel), follow_symlinks=False)


def _build(name, source, dest):
    """``pip wheel`` one distribution installed from a local directory or a direct URL; a local
    directory is built from a copy, so the wheel holds its current sources and nothing stale."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"wheel-{name}-") as tmp:
        target = source
        if Path(source).is_dir():
            target = str(Path(tmp, "src"))
            _copy_project(source, target)
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), target], "wheel", [name])
    log.info("pip wheel %s: built from %s in %.1f s", name, source, time.perf_counter() - t0)


def _wheel_files(dest):
    """{canonical name: (version, path)} of the wheels in ``dest``."""
    out = {}
    for path in sorted(Path(dest).glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        out[canonicalize_name(name)] = (str(version), path)
    return out


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_lists(dest, wheels, meta):
    """``requirements.txt`` (what the notebook installs) and ``manifest.json`` (what it is)."""
    lines = [f"{n}=={v}" for n, (v, _) in sorted(wheels.items())]
    Path(dest, "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entries = [
        {"name": n, "version": v, "filename": p.name, "size": p.stat().st_size, "sha256": _sha256(p)}
        for n, (v, p) in sorted(wheels.items())
    ]
    manifest = {**meta, "wheels": entries}
    with open(Path(dest, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return manifest


def _check_wheels(pins, wheels):
    """Every pinned distribution has exactly its wheel (pip may name files differently)."""
    absent = sorted(set(pins) - set(wheels))
    if absent:
        raise InputError(f"no wheel was produced for: {', '.join(absent)}")
    for name, version in pins.items():
        if wheels[name][0] != version:
            log.warning(
                "%s: installed %s but the wheel built is %s: requirements.txt pins the wheel",
                name,
                version,
                wheels[name][0],
            )


def collect(names, exclude, out_dir, *, python_version=None, platform=None, project_dir=None):
    """Write into ``out_dir`` (replaced atomically) the wheels of :func:`closure` of ``names``,
    pinned to the installed versions, with ``requirements.txt`` and ``manifest.json``.

    Index distributions come from one ``pip download --no-deps --only-binary=:all:`` (a version
    published as an sdist only is built into a wheel here); those installed from a local
    directory or URL (direct_url.json: our editable arena-pref) are built by ``pip wheel --no-deps
    --no-build-isolation`` from a copy of their sources. ``project_dir``: build arena-pref from
    this directory instead (e.g. when it was installed from a wheel). ``python_version`` /
    ``platform`` (e.g. "3.12", "manylinux_2_35_x86_64", or a list of tags) fetch wheels for
    another interpreter, with markers evaluated for it. Returns the manifest: "wheels" (name,
    version, filename, size, sha256), "built_here", and "image_requirements" (what the bundle
    expects the image to satisfy: compare with the notebook's ``pip list``)."""
    t0 = time.perf_counter()
    env = _marker_env(python_version, platform)
    pins = closure(names, exclude, marker_env=env)
    built = _built_sources(pins, project_dir)
    log.info(
        "closure of %d named distributions: %d to bundle (%d built locally: %s)",
        len(names),
        len(pins),
        len(built),
        ", ".join(built) or "none",
    )
    with atomic_path(out_dir, directory=True) as tmp:
        no_wheel = _download({n: v for n, v in pins.items() if n not in built}, tmp, python_version, platform)
        _build_sdists(no_wheel, tmp, cross=bool(python_version or platform))
        for name, source in built.items():
            _build(name, source, tmp)
        wheels = _wheel_files(tmp)
        _check_wheels(pins, wheels)
        meta = {
            "python_version": python_version,
            "platform": platform,
            "built_here": sorted({*built, *no_wheel}),
            "image_requirements": image_requirements(names, exclude, marker_env=env),
        }
        manifest = _write_lists(tmp, wheels, meta)
    size = sum(w["size"] for w in manifest["wheels"])
    log.info(
        "wrote %s: %d wheels, %.1f MB, requirements.txt, manifest.json in %.1f s",
        out_dir,
        len(wheels),
        size / 1e6,
        time.perf_counter() - t0,
    )
    return manifest


def _built_sources(pins, project_dir):
    """{name: source} of the pinned distributions pip must build rather than download."""
    sources = {n: _local_source(_distribution(n)) for n in pins}
    if project_dir is not None and OWN_NAME in pins:
        sources[OWN_NAME] = str(project_dir)
    return {n: s for n, s in sources.items() if s}


def main(argv=None):
    """``python -m arena_pref.kaggle.wheels OUT_DIR [NAMES...]``."""
    from arena_pref.logs import run_main, setup_logging

    parser = argparse.ArgumentParser(prog="python -m arena_pref.kaggle.wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES))
    parser.add_argument("--exclude-file", default=str(IMAGE_FILE), help="YAML list of image packages")
    parser.add_argument("--python-version", help="target interpreter, e.g. 3.12 (default: this one)")
    parser.add_argument("--platform", action="append", help="target platform tag, e.g. manylinux_2_35_x86_64")
    args = parser.parse_args(argv)
    setup_logging(None)
    run_main(collect)(
        args.names,
        image_exclude(args.exclude_file),
        args.out_dir,
        python_version=args.python_version,
        platform=args.platform,
    )


if __name__ == "__main__":
    main()
