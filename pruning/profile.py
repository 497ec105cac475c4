"""Prune profiles: which layers are pruned, how much and in which pattern (README, "Prune profiles").

Native format::

    sparsity: kgrc            # default type of the layers below
    group_size: [8, 8]        # gM, gN
    prune_ratios:
      conv2.weight: {kgr: 0.5, kgc: 0.67}
      conv4b.weight: 0.5      # a number = the default type's ratio (for kgrc: both)

Legacy RT3D files (a lone `prune_ratios:` with `module.` keys, the type on the command line) and TCAD's pair of
files for KGRC (`--config-file kgr.yaml kgc.yaml`) load unchanged. Every mistake is a `ProfileError` naming the
file and the key, raised before any training starts.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import nn

from .errors import ProfileError
from .groups import column_layout
from .projections import KGR_ROUNDINGS, KGRC_METHODS, SCORES, LayerRule, keep_count
from .safe_yaml import load_yaml
from .sparsity_types import TYPES, canonical_type, default_group_size

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
TOP_KEYS = {"sparsity", "group_size", "prune_ratios", "balanced", "score", "kgrc_method", "kgr_rounding",
            "description"}


@dataclass
class PruneProfile:
    """A validated profile. `rules` maps weight names (no `module.` prefix) to their rules."""

    rules: dict[str, LayerRule]
    sparsity: str
    group_size: tuple[int, int]
    source: str
    options: dict = field(default_factory=dict)

    def resolve(self, model: nn.Module) -> dict[str, LayerRule]:
        """Map the profile onto `model`'s parameter names; every key must name a Conv3d weight of the model."""
        params = dict(model.named_parameters())
        conv_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv3d)}
        resolved = {}
        for key, rule in self.rules.items():
            name = key if key in params else None
            if name is None:
                near = difflib.get_close_matches(key, sorted(conv_weights), n=3, cutoff=0.5)
                some = ", ".join(sorted(conv_weights)[:6])
                hint = f"; nearest: {', '.join(near)}" if near else f"; prunable: {some} ..."
                raise ProfileError(f"{self.source}: key '{key}': the model has no such parameter{hint}")
            if name not in conv_weights:
                raise ProfileError(f"{self.source}: key '{key}': not a Conv3d weight (shape "
                                   f"{tuple(params[name].shape)}); only Conv3d weights can be pruned")
            _check_not_empty(rule, tuple(params[name].shape), f"{self.source}: key '{key}'")
            resolved[name] = rule
        return resolved

    def to_dict(self) -> dict:
        """The native format, as stored in checkpoints."""
        out = {"sparsity": self.sparsity, "group_size": list(self.group_size)}
        out.update(self.options)
        out["prune_ratios"] = {name: dict(rule.ratios) for name, rule in self.rules.items()}
        return out

    def write(self, path: Path, header: str = "") -> Path:
        """The profile as a YAML file the loader reads back, after `header` (comment lines)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def find_profile_file(name: str, profiles_dir: Path = PROFILES_DIR, arch: str | None = None) -> Path:
    """A profile given as a path, or by name from `profiles/` (with or without `.yaml`, or an alias; an alias
    resolves for `arch`, see alias_file)."""
    candidates = [Path(name), profiles_dir / name, profiles_dir / f"{name}.yaml", profiles_dir / f"{name}.yml"]
    for path in candidates:
        if path.is_file():
            return path
    aliases = load_aliases(profiles_dir)
    if name in aliases:
        return profiles_dir / alias_file(name, aliases[name], arch)
    known = sorted(p.stem for p in profiles_dir.glob("*.yaml") if p.name != "aliases.yaml")
    near = difflib.get_close_matches(name, known + sorted(aliases), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; shipped: {', '.join(known)}"
    raise ProfileError(f"profile '{name}' not found (looked for {candidates[0]} and {profiles_dir}/{name}.yaml){hint}")


def alias_file(name: str, entry: dict, arch: str | None) -> str:
    """The file a published alias names for `arch` (canonical --arch name; None: the alias's own model).

    `arch:` lists the models the file is for; `for_arch:` maps other models to a file pruning the same layers
    there, used with a one-line note; any other arch is a ProfileError."""
    archs = entry.get("arch")
    archs = [archs] if isinstance(archs, str) else list(archs or [])
    if arch is None or not archs or arch in archs:
        return entry["file"]
    other = (entry.get("for_arch") or {}).get(arch)
    if other:
        print(f"note: {name} is the profile for --arch {'/'.join(archs)}; --arch {arch} uses {other} (the same "
              "layers on that model)", file=sys.stderr)
        return other
    raise ProfileError(f"profile '{name}' is for --arch {'/'.join(archs)}, not --arch {arch}")


def load_aliases(profiles_dir: Path = PROFILES_DIR) -> dict[str, dict]:
    """Published profile names of RT3D / TCAD mapped to the shipped files (profiles/aliases.yaml)."""
    path = profiles_dir / "aliases.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def load_profile(spec: str | Iterable[str], *, sparsity: str | None = None,
                 group_size: tuple[int, int] | None = None, profiles_dir: Path = PROFILES_DIR,
                 arch: str | None = None, **options) -> PruneProfile:
    """Load one profile, or TCAD's pair (KGR file, KGC file) as one KGRC profile.

    `sparsity` is the command line's type (required by legacy files that carry none; with a published alias it
    replaces the shipped file's, as the original files carried no type); `group_size` and `options` (balanced,
    score, kgrc_method) override the file's; `arch` (canonical --arch) picks an alias's file for that model.
    """
    names = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if len(names) == 2:
        return _load_pair(names, sparsity, group_size, profiles_dir, options, arch)
    if len(names) != 1:
        raise ProfileError(f"--config-file takes one profile, or two (KGR then KGC) for kgrc; got {len(names)}")
    name = str(names[0])
    cli_type = canonical_or_error(sparsity, "--sparsity-type") if sparsity else None
    aliases = load_aliases(profiles_dir)
    is_alias = name in aliases and not Path(name).exists()
    if cli_type is None and is_alias:
        cli_type = aliases[name].get("sparsity")
    path = find_profile_file(name, profiles_dir, arch)
    data = _read_yaml(path)
    if is_alias and cli_type and isinstance(data, dict):
        data = _retype_published(data, cli_type)
    return parse_profile(data, str(path), cli_type, group_size, options)


def _retype_published(data: dict, cli_type: str) -> dict:
    """A published profile named by its alias takes the command line's type (RT3D's `--sparsity-type
    blk-vanilla --config-file c3d_3.57x`): the original file held only ratios. The shipped file's group size
    belongs to its own type, so the new type's default (or --group-size) applies."""
    file_type = data.get("sparsity")
    ratios = data.get("prune_ratios")
    plain = isinstance(ratios, dict) and all(isinstance(v, (int, float)) for v in ratios.values())
    if not file_type or not plain or canonical_or_error(file_type, "sparsity") == cli_type:
        return data
    return {k: v for k, v in data.items() if k != "group_size"} | {"sparsity": cli_type}


def canonical_or_error(name: str, where: str) -> str:
    try:
        return canonical_type(name)
    except ValueError as e:
        raise ProfileError(f"{where}: {e}") from None


def parse_profile(data: object, source: str, cli_type: str | None = None,
                  group_size: tuple[int, int] | None = None, options: dict | None = None) -> PruneProfile:
    if not isinstance(data, dict) or "prune_ratios" not in data:
        raise ProfileError(f"{source}: expected a mapping with a 'prune_ratios:' section")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ProfileError(f"{source}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(TOP_KEYS))}")
    file_type = canonical_or_error(data["sparsity"], f"{source}: key 'sparsity'") if "sparsity" in data else None
    if file_type and cli_type and file_type != cli_type:
        raise ProfileError(f"{source}: declares sparsity '{file_type}' but --sparsity-type is '{cli_type}'; "
                           "drop one of them")
    default = file_type or cli_type
    if default is None:
        raise ProfileError(f"{source}: no 'sparsity:' in the file (a legacy profile): pass --sparsity-type")
    opts = {k: data[k] for k in ("balanced", "score", "kgrc_method", "kgr_rounding") if k in data}
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    _check_options(opts, source)
    gsize = _group_size(group_size or data.get("group_size") or default_group_size(default), source)
    ratios = data["prune_ratios"]
    if not isinstance(ratios, dict) or not ratios:
        raise ProfileError(f"{source}: 'prune_ratios' must be a non-empty mapping of weight name to ratio")
    rules = {}
    for key, value in ratios.items():
        name = _strip_module(str(key))
        if name in rules:
            raise ProfileError(f"{source}: key '{key}': listed twice (with and without 'module.')")
        kind, layer_ratios = _parse_entry(value, default, source, key)
        rules[name] = LayerRule(kind, layer_ratios, gsize, **opts)
    return PruneProfile(rules, default, gsize, source, opts)


def _load_pair(names, sparsity, group_size, profiles_dir, options, arch=None) -> PruneProfile:
    if sparsity and canonical_or_error(sparsity, "--sparsity-type") != "kgrc":
        raise ProfileError(f"two --config-file profiles combine into kgrc, but --sparsity-type is '{sparsity}'")
    kgr = load_profile(names[0], sparsity="kgr", group_size=group_size, profiles_dir=profiles_dir, arch=arch,
                       **options)
    kgc = load_profile(names[1], sparsity="kgc", group_size=group_size, profiles_dir=profiles_dir, arch=arch,
                       **options)
    for prof, want in ((kgr, "kgr"), (kgc, "kgc")):
        other = {r.sparsity for r in prof.rules.values()} - {want}
        if other:
            raise ProfileError(f"{prof.source}: expected only {want} ratios in the {want} file, found {other}")
    gsize = tuple(group_size or kgr.group_size)
    rules = {}
    for name in list(kgr.rules) + [n for n in kgc.rules if n not in kgr.rules]:
        ratios = {}
        if name in kgr.rules:
            ratios["kgr"] = kgr.rules[name].ratio
        if name in kgc.rules:
            ratios["kgc"] = kgc.rules[name].ratio
        kind = "kgrc" if len(ratios) == 2 else next(iter(ratios))
        rules[name] = LayerRule(kind, ratios, gsize, **kgr.options)
    return PruneProfile(rules, "kgrc", gsize, f"{kgr.source} + {kgc.source}", kgr.options)


def _read_yaml(path: Path) -> object:
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: not UTF-8 text (byte {e.start}); a profile is YAML") from None
    except RecursionError:
        raise ProfileError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ProfileError(f"{path}: not valid YAML{line}: {problem}") from None
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None


def _strip_module(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def _ratio(value: object, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{source}: key '{key}': ratio must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ProfileError(f"{source}: key '{key}': ratio {value} is outside [0, 1) (the fraction removed)")
    return float(value)


def _parse_entry(value: object, default: str, source: str, key: str) -> tuple[str, dict[str, float]]:
    if not isinstance(value, dict):
        r = _ratio(value, source, key)
        return default, {c: r for c in TYPES[default].components}
    ratios = {}
    for t, r in value.items():
        kind = canonical_or_error(t, f"{source}: key '{key}'")
        for c in TYPES[kind].components:
            ratios[c] = _ratio(r, source, f"{key}.{t}")
    if set(ratios) == {"kgr", "kgc"}:
        return "kgrc", ratios
    if len(ratios) != 1:
        raise ProfileError(f"{source}: key '{key}': combine only kgr with kgc, got {sorted(ratios)}")
    return next(iter(ratios)), ratios


def _check_not_empty(rule: LayerRule, shape: tuple[int, ...], where: str) -> None:
    """A rule that would remove every weight of the layer is a mistake (e.g. kgc on a 1x1x1 conv)."""
    ncol, _ = column_layout(shape[2:])
    counts = {"kgc": ncol, "kgr": min(rule.group_size[0], shape[0])}
    for kind, n in counts.items():
        rounding = rule.kgr_rounding if kind == "kgr" else "half-up"
        if kind in rule.ratios and keep_count(n, rule.ratios[kind], rounding) == 0:
            unit = "column" if kind == "kgc" else "row"
            raise ProfileError(f"{where}: {kind} ratio {rule.ratios[kind]} removes every {unit} of each group "
                               f"of this {'x'.join(map(str, shape))} weight ({n} per group); lower the ratio")


def _group_size(value: object, source: str) -> tuple[int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ProfileError(f"{source}: key 'group_size': expected two positive integers [gM, gN], got {value!r}")
    return int(value[0]), int(value[1])


def _check_options(opts: dict, source: str) -> None:
    if "score" in opts and opts["score"] not in SCORES:
        raise ProfileError(f"{source}: key 'score': {opts['score']!r} is not one of {', '.join(SCORES)}")
    if "kgrc_method" in opts and opts["kgrc_method"] not in KGRC_METHODS:
        raise ProfileError(f"{source}: key 'kgrc_method': {opts['kgrc_method']!r} is not one of "
                           f"{', '.join(KGRC_METHODS)}")
    if "kgr_rounding" in opts and opts["kgr_rounding"] not in KGR_ROUNDINGS:
        raise ProfileError(f"{source}: key 'kgr_rounding': {opts['kgr_rounding']!r} is not one of "
                           f"{', '.join(KGR_ROUNDINGS)}")
    if "balanced" in opts and not isinstance(opts["balanced"], bool):
        raise ProfileError(f"{source}: key 'balanced': expected true or false, got {opts['balanced']!r}")
