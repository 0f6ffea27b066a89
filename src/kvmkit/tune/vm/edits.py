"""One change to a domain definition, applied to the XML text (pure), and shown as the XML it changes.

An edit names the element by a path of ElementPath steps from <domain> ('devices', 'disk[2]', 'driver'); missing
plain-tag steps are created, so 'add <iothreads>1</iothreads>' and 'set cache=none on disk 2' are the same shape."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from kvmkit.errors import InvalidInput


@dataclass(frozen=True)
class XmlEdit:
    path: tuple[str, ...]  # steps below <domain>; the last one is the element changed
    attrs: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    children: tuple[str, ...] = ()  # empty child elements to add when absent (<hugepages/>, <relaxed state='on'/>)
    remove: tuple[str, ...] = ()  # child tags to drop (the <model> of a CPU made host-passthrough)
    remove_attrs: tuple[str, ...] = ()


_TAG = re.compile(r"^([A-Za-z_][\w-]*)$")
_KEYED = re.compile(r"^([A-Za-z_][\w-]*)\[@([A-Za-z_][\w-]*)='([^']*)'\]$")


def _walk(root: ET.Element, path: Sequence[str]) -> ET.Element:
    """The element at path; a missing `tag` or `tag[@key='value']` step is created (positional steps are not)."""
    el = root
    for step in path:
        found = el.find(step)
        if found is None:
            if plain := _TAG.match(step):
                found = ET.SubElement(el, plain.group(1))
            elif keyed := _KEYED.match(step):
                found = ET.SubElement(el, keyed.group(1), {keyed.group(2): keyed.group(3)})
            else:
                raise InvalidInput(f"domain XML: no element at {'/'.join(path)} (step {step!r})")
        el = found
    return el


def _child(spec: str) -> ET.Element:
    """'relaxed state=on' → <relaxed state='on'/>."""
    tag, *pairs = spec.split()
    return ET.Element(tag, dict(p.split("=", 1) for p in pairs))


def apply_edit(root: ET.Element, edit: XmlEdit) -> ET.Element:
    el = _walk(root, edit.path)
    for name in edit.remove:
        for child in el.findall(name):
            el.remove(child)
    for name in edit.remove_attrs:
        el.attrib.pop(name, None)
    el.attrib.update(edit.attrs)
    if edit.text is not None:
        el.text = edit.text
    for spec in edit.children:
        child = _child(spec)
        if not any(c.tag == child.tag for c in el):
            el.append(child)
    return el


def applied(xml: str, edits: Sequence[XmlEdit]) -> str:
    root = ET.fromstring(xml)
    for edit in edits:
        apply_edit(root, edit)
    return ET.tostring(root, encoding="unicode")


def _shown(el: ET.Element | None) -> str:
    if el is None:
        return "(absent)"
    el = _copy(el)
    el.tail = None
    for sub in el.iter():
        if sub is not el and sub.tail is not None and not sub.tail.strip():
            sub.tail = None
        if sub.text is not None and not sub.text.strip():
            sub.text = None
    return ET.tostring(el, encoding="unicode")


def _copy(el: ET.Element) -> ET.Element:
    return ET.fromstring(ET.tostring(el))


def before_after(xml: str, edits: Sequence[XmlEdit]) -> tuple[str, str]:
    """The top element each edit touches (first step below <domain>, or the edited element for devices), as XML,
    before and after: what an operator reads to see the fix."""
    root = ET.fromstring(xml)
    after_root = ET.fromstring(xml)
    before, after = [], []
    seen: set[tuple[str, ...]] = set()
    for edit in edits:
        apply_edit(after_root, edit)
    for edit in edits:
        shown = edit.path[:2] if edit.path[0] == "devices" else edit.path[:1]
        if shown in seen:
            continue
        seen.add(shown)
        before.append(_shown(root.find("/".join(shown))))
        after.append(_shown(after_root.find("/".join(shown))))
    return "\n".join(before), "\n".join(after)
