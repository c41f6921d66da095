"""Humanoid bone maps: canonical slots, built-in naming presets, detection and JSON files.

No ``bpy``: everything works on plain bone-name lists, so the add-on, the CLI and the tests share
it. A *map* is ``{slot: [bone names, root to tip]}``; single-bone slots hold one name, chain slots
(spine, neck, the five fingers) hold however many bones the rig has, and the retargeter resolves
chains of different lengths (addon/rig/retarget.py).

Slots: ``hips``, ``spine``, ``neck``, ``head`` and, per side (``.L`` / ``.R``), ``clavicle``,
``upper_arm``, ``forearm``, ``hand``, ``thigh``, ``shin``, ``foot``, ``toe`` and the finger
chains ``thumb``, ``index``, ``middle``, ``ring``, ``pinky``. Finger chains are the phalanges
only: metacarpals (UE5 ``index_metacarpal_l``, Rigify ``palm.01.L``, MHR ``pinky0``) stay
unmapped because most rigs lack them. The thumb is the exception: its first bone is the
metacarpal-like joint in every convention here (MHR ``thumb0``, Mixamo ``Thumb1``, UE5
``thumb_01``), so all of them go in the chain.

The Rigify ``rigify_fk`` preset names a *generated* rig's FK controls; the scene side computes
on the rig's ``ORG-`` skeleton (``rigify_org_map``) and places those controls so the ORG bones
land where they must (tested on a rig Rigify generates from its human metarig).
``rigify_deform`` is for deform-only exports (``DEF-`` bones without the control rig).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping, Sequence

CENTER_SLOTS: tuple[str, ...] = ("hips", "spine", "neck", "head")
SIDE_PARTS: tuple[str, ...] = ("clavicle", "upper_arm", "forearm", "hand", "thigh", "shin",
                               "foot", "toe", "thumb", "index", "middle", "ring", "pinky")
SIDES: tuple[str, ...] = ("L", "R")
FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
SLOTS: tuple[str, ...] = CENTER_SLOTS + tuple(f"{p}.{s}" for s in SIDES for p in SIDE_PARTS)
CHAIN_PARTS = frozenset(("spine", "neck") + FINGERS)
# The slot whose first bone a slot points at (its "aim"): the retargeter aligns and measures
# bones by head -> aim-head segments, which mean the same thing in every rig, whereas bone
# head -> tail conventions differ (an FBX import's bones point anywhere). None: use the bone axis.
SLOT_AIM: dict[str, str | None] = {
    "hips": "spine", "spine": "neck", "neck": "head", "head": None,
    "clavicle": "upper_arm", "upper_arm": "forearm", "forearm": "hand", "hand": "middle",
    "thigh": "shin", "shin": "foot", "foot": "toe", "toe": None,
    **{f: None for f in FINGERS},
}
# The slot whose first bone's head a chain is measured from: where rigs start the spine and the
# thumb differs (Mixamo's Spine sits above MHR's c_spine0; a thumb may or may not include its
# metacarpal), so those chains are matched by length from a joint every rig agrees on. The other
# fingers start at the knuckle everywhere, and the palm's length differs between rigs.
CHAIN_ANCHOR: dict[str, str] = {"spine": "hips", "thumb": "hand"}
LIMBS: dict[str, tuple[str, str, str]] = {"arm": ("upper_arm", "forearm", "hand"),
                                          "leg": ("thigh", "shin", "foot")}
MAP_FORMAT = "sam3d-bone-map"
MAP_VERSION = 1
MIN_DETECTED_BONES = 4

# One entry per slot: a tuple of *elements* (chain order); each element is a tuple of
# alternative names, the first present one wins. "{S}" is the side word of the preset.
_Spec = dict[str, tuple[tuple[str, ...], ...]]


def _one(*names: str) -> tuple[tuple[str, ...], ...]:
    return (tuple(names),)


def _chain(*names: str) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) for n in names)


def _mhr() -> _Spec:
    fingers = {f: _chain(*(f"{{S}}_{f}{i}" for i in ((0, 1, 2, 3) if f == "thumb" else (1, 2, 3))))
               for f in FINGERS}
    return {"hips": _one("root"), "spine": _chain("c_spine0", "c_spine1", "c_spine2", "c_spine3"),
            "neck": _chain("c_neck"), "head": _one("c_head"),
            "clavicle": _one("{S}_clavicle"), "upper_arm": _one("{S}_uparm"),
            "forearm": _one("{S}_lowarm"), "hand": _one("{S}_wrist"),
            "thigh": _one("{S}_upleg"), "shin": _one("{S}_lowleg"),
            # MHR bends the ankle at *_talocrural; *_foot (same place) only carries leg twist
            "foot": _one("{S}_talocrural"), "toe": _one("{S}_ball"), **fingers}


def _mixamo() -> _Spec:
    fingers = {f: _chain(*(f"{{S}}Hand{f.title()}{i}" for i in (1, 2, 3))) for f in FINGERS}
    return {"hips": _one("Hips"), "spine": _chain("Spine", "Spine1", "Spine2"),
            "neck": _chain("Neck", "Neck1"), "head": _one("Head"),
            "clavicle": _one("{S}Shoulder"), "upper_arm": _one("{S}Arm"),
            "forearm": _one("{S}ForeArm"), "hand": _one("{S}Hand"),
            "thigh": _one("{S}UpLeg"), "shin": _one("{S}Leg"), "foot": _one("{S}Foot"),
            "toe": _one("{S}ToeBase"), **fingers}


def _unreal() -> _Spec:
    fingers = {f: _chain(*(f"{f}_{i:02d}_{{S}}" for i in (1, 2, 3))) for f in FINGERS}
    # our own "unreal" export names MHR's thumb0 thumb_metacarpal: a 4-bone thumb then
    fingers["thumb"] = _chain("thumb_metacarpal_{S}", "thumb_01_{S}", "thumb_02_{S}",
                              "thumb_03_{S}")
    return {"hips": _one("pelvis"),
            "spine": _chain(*(f"spine_{i:02d}" for i in range(1, 6))),
            "neck": _chain("neck_01", "neck_02"), "head": _one("head"),
            "clavicle": _one("clavicle_{S}"), "upper_arm": _one("upperarm_{S}"),
            "forearm": _one("lowerarm_{S}"), "hand": _one("hand_{S}"),
            "thigh": _one("thigh_{S}"), "shin": _one("calf_{S}"), "foot": _one("foot_{S}"),
            "toe": _one("ball_{S}"), **fingers}


def _unity() -> _Spec:
    words = {"thumb": "Thumb", "index": "Index", "middle": "Middle", "ring": "Ring",
             "pinky": "Little"}
    fingers = {f: _chain(*(f"{{S}}{w}{k}" for k in ("Proximal", "Intermediate", "Distal")))
               for f, w in words.items()}
    return {"hips": _one("Hips"), "spine": _chain("Spine", "Chest", "UpperChest"),
            "neck": _chain("Neck"), "head": _one("Head"),
            "clavicle": _one("{S}Shoulder"), "upper_arm": _one("{S}UpperArm"),
            "forearm": _one("{S}LowerArm"), "hand": _one("{S}Hand"),
            "thigh": _one("{S}UpperLeg"), "shin": _one("{S}LowerLeg"), "foot": _one("{S}Foot"),
            "toe": _one("{S}Toes"), **fingers}


def _rigify(prefix: str = "") -> _Spec:
    p = prefix
    fingers = {f: _chain(*(f"{p}{'' if f == 'thumb' else 'f_'}{f}.{i:02d}.{{S}}" for i in (1, 2, 3)))
               for f in FINGERS}
    # The metarig's "spine" bone is the hips; spine.004/.005 the neck, spine.006 the head.
    return {"hips": _one(f"{p}spine"),
            "spine": _chain(f"{p}spine.001", f"{p}spine.002", f"{p}spine.003"),
            "neck": _chain(f"{p}spine.004", f"{p}spine.005"), "head": _one(f"{p}spine.006"),
            "clavicle": _one(f"{p}shoulder.{{S}}"), "upper_arm": _one(f"{p}upper_arm.{{S}}"),
            "forearm": _one(f"{p}forearm.{{S}}"), "hand": _one(f"{p}hand.{{S}}"),
            "thigh": _one(f"{p}thigh.{{S}}"), "shin": _one(f"{p}shin.{{S}}"),
            "foot": _one(f"{p}foot.{{S}}"), "toe": _one(f"{p}toe.{{S}}"), **fingers}


def _rigify_fk() -> _Spec:
    spec = _rigify()
    spec.update({
        # "torso" is the master control: it carries the root motion and the hips' turn
        "hips": _one("torso"), "spine": _chain("spine_fk.001", "spine_fk.002", "spine_fk.003"),
        "neck": _chain("neck"), "head": _one("head"),
        "upper_arm": _one("upper_arm_fk.{S}"), "forearm": _one("forearm_fk.{S}"),
        "hand": _one("hand_fk.{S}"), "thigh": _one("thigh_fk.{S}"),
        "shin": _one("shin_fk.{S}"), "foot": _one("foot_fk.{S}"),
        "toe": _one("toe_fk.{S}", "toe.{S}")})
    return spec


# preset -> (spec, side words (left, right), optional name prefixes). The order breaks score
# ties: control rigs before deform skeletons, which are driven by constraints.
_PRESETS: dict[str, tuple[_Spec, tuple[str, str], tuple[str, ...]]] = {
    "mhr": (_mhr(), ("l", "r"), ("",)),
    "mixamo": (_mixamo(), ("Left", "Right"), ("mixamorig:", "", "mixamorig_", "mixamorig1_")),
    "unreal": (_unreal(), ("l", "r"), ("",)),
    "unity": (_unity(), ("Left", "Right"), ("",)),
    "rigify_fk": (_rigify_fk(), ("L", "R"), ("",)),
    "rigify": (_rigify(), ("L", "R"), ("",)),
    "rigify_deform": (_rigify("DEF-"), ("L", "R"), ("",)),
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)
# FBX importers keep namespaces ("mixamorig1:Hips", "Armature|Hips"): compare without them.
_NAMESPACE = re.compile(r"^.*[:|]")


def _part_of(slot: str) -> str:
    return slot.split(".", 1)[0]


def is_chain_slot(slot: str) -> bool:
    """Whether ``slot`` holds a chain (any number of bones) rather than one bone."""
    return _part_of(slot) in CHAIN_PARTS


def aim_slot(slot: str) -> str | None:
    """The slot whose first bone ``slot``'s last bone points at (same side), or None."""
    part, _, side = slot.partition(".")
    aim = SLOT_AIM.get(part)
    if aim is None:
        return None
    return aim if aim in CENTER_SLOTS else f"{aim}.{side}"


def anchor_slot(slot: str) -> str | None:
    """The slot whose first bone's head a chain slot is measured from (same side), or None."""
    part, _, side = slot.partition(".")
    anchor = CHAIN_ANCHOR.get(part)
    if anchor is None:
        return None
    return anchor if anchor in CENTER_SLOTS else f"{anchor}.{side}"


def _lookup(bone_names: Iterable[str], prefixes: Sequence[str]) -> dict[str, str]:
    """Search key -> actual bone name: exact names, names without a namespace or preset prefix,
    then a lower-case fallback where it is unambiguous."""
    names = list(bone_names)
    table: dict[str, str] = {}
    lower: dict[str, list[str]] = {}
    for name in names:
        keys = {name, _NAMESPACE.sub("", name)}
        for key in list(keys):
            for pre in prefixes:
                if pre and key.startswith(pre):
                    keys.add(key[len(pre):])
        for key in keys:
            table.setdefault(key, name)
            lower.setdefault(key.lower(), []).append(name)
    for key, found in lower.items():
        if len(set(found)) == 1:
            table.setdefault("\0" + key, found[0])
    return table


def _find(table: dict[str, str], alternatives: Sequence[str]) -> str | None:
    for alt in alternatives:
        if alt in table:
            return table[alt]
    for alt in alternatives:
        hit = table.get("\0" + alt.lower())
        if hit is not None:
            return hit
    return None


def map_bones(bone_names: Iterable[str], preset: str) -> dict[str, list[str]]:
    """The map of ``preset`` for a rig's bone names: every slot that has at least one bone."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown bone-map preset {preset!r}; choose one of {list(PRESETS)}")
    spec, side_words, prefixes = _PRESETS[preset]
    table = _lookup(bone_names, prefixes)
    used: set[str] = set()
    out: dict[str, list[str]] = {}
    for slot in SLOTS:
        part, _, side = slot.partition(".")
        word = side_words[SIDES.index(side)] if side else ""
        bones = []
        for element in spec[part]:
            hit = _find(table, [a.replace("{S}", word) for a in element])
            # a bone serves one slot only (case folding could otherwise alias two)
            if hit is not None and hit not in used:
                bones.append(hit)
                used.add(hit)
        if bones:
            out[slot] = bones
    return out


def rigify_org_map(bone_names: Iterable[str]) -> dict[str, list[str]]:
    """The ``ORG-`` skeleton of a generated Rigify rig: the clean hierarchy the FK controls
    drive through constraints, so the retargeter computes on it and the controls follow."""
    spec = _rigify("ORG-")
    table = _lookup(bone_names, ("",))
    out: dict[str, list[str]] = {}
    for slot in SLOTS:
        part, _, side = slot.partition(".")
        bones = [hit for element in spec[part]
                 if (hit := _find(table, [a.replace("{S}", side) for a in element])) is not None]
        if bones:
            out[slot] = bones
    return out


def is_generated_rigify(bone_names: Iterable[str]) -> bool:
    """A rig Rigify generated (controls + ORG/DEF/MCH bones), not a metarig."""
    names = set(bone_names)
    return "torso" in names and "ORG-spine" in names and any(n.startswith("MCH-") for n in names)


def detect_map(bone_names: Iterable[str]) -> tuple[str, dict[str, list[str]]]:
    """The preset filling most slots for ``bone_names`` and its map. Raises ValueError when no preset
    finds at least MIN_DETECTED_BONES bones (not a humanoid, or an unknown convention: write
    a map file then)."""
    names = list(bone_names)
    if not all(isinstance(n, str) for n in names):
        raise ValueError("bone_names must be strings")
    best: tuple[int, str, dict[str, list[str]]] | None = None
    for preset in PRESETS:
        mapping = map_bones(names, preset)
        # Slots, not bones: a generated Rigify rig's DEF- skeleton has one neck bone more than
        # its FK controls, yet the controls are what must be posed (order breaks the tie).
        score = len(mapping)
        if best is None or score > best[0]:
            best = (score, preset, mapping)
    assert best is not None
    n_bones = sum(len(v) for v in best[2].values())
    if n_bones < MIN_DETECTED_BONES:
        raise ValueError(f"no bone-map preset matches this rig (best: {best[1]!r} with "
                         f"{n_bones} bones of {len(names)}); save a map file for it")
    return best[1], best[2]


def validate_map(mapping: Mapping[str, object], where: str = "bone map") -> dict[str, list[str]]:
    """Check a map and return it normalised (a single name may be given as a str)."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where}: expected an object of slot -> bone names, "
                         f"got {type(mapping).__name__}")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for slot, value in mapping.items():
        if slot not in SLOTS:
            raise ValueError(f"{where}: unknown slot {slot!r}; slots are {list(SLOTS)}")
        bones = [value] if isinstance(value, str) else value
        if not isinstance(bones, list) or not bones:
            raise ValueError(f"{where}: slot {slot!r} needs a non-empty list of bone names")
        for b in bones:
            if not isinstance(b, str) or not b:
                raise ValueError(f"{where}: slot {slot!r} has a bad bone name {b!r}")
            if b in owner:
                raise ValueError(f"{where}: bone {b!r} is in both {owner[b]!r} and {slot!r}")
            owner[b] = slot
        if len(bones) > 1 and not is_chain_slot(slot):
            raise ValueError(f"{where}: slot {slot!r} takes one bone, got {len(bones)}")
        out[slot] = list(bones)
    return out


def save_map(path: str | os.PathLike, mapping: Mapping[str, object],
             preset: str | None = None) -> str:
    """Write a map as a small JSON file (validated first); returns the path."""
    slots = validate_map(mapping)
    doc = {"format": MAP_FORMAT, "version": MAP_VERSION, "preset": preset,
           "slots": {s: slots[s] for s in SLOTS if s in slots}}
    p = os.fspath(path)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return p


def load_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a map written by :func:`save_map`; ValueError names the file and the problem."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != MAP_FORMAT:
        raise ValueError(f"{p}: not a bone map (expected \"format\": \"{MAP_FORMAT}\")")
    if doc.get("version") != MAP_VERSION:
        raise ValueError(f"{p}: unsupported bone-map version {doc.get('version')!r} "
                         f"(this add-on reads {MAP_VERSION})")
    if "slots" not in doc:
        raise ValueError(f"{p}: no \"slots\" object")
    return validate_map(doc["slots"], where=p)
