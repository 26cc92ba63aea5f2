"""Converting a workflow in ComfyUI's UI (frontend) format to the API format the server's /prompt takes.

A small, strict stand-in for the frontend's own graphToPrompt, enough for the pack's example workflows:

- widget values are mapped to input names in the order /object_info lists the node's inputs (required, then
  optional), skipping sockets and forceInput inputs; an INT or COMBO input with a control_after_generate widget
  (asked for by its options, or for an INT named seed/noise_seed when the options do not say) carries one more,
  UI-only value, which is dropped;
- optional widgets the saved values stop short of (saved before the input existed) get their /object_info
  default, as the frontend gives them on load and then sends them (checked in a browser against the host's
  frontend and 1.58.1);
- a link into an input wins over that input's widget value (a widget converted to an input keeps its value);
- text widgets with dynamicPrompts are expanded as the frontend does when it queues ({a|b} picks one; a block
  without '|' becomes its bare content; // and /* */ comments are removed);
- Note and MarkdownNote are frontend-only and left out.

Anything else it does not know (reroutes, legacy primitive nodes, muted or bypassed nodes, subgraphs, groups
of nodes, a widget count or a value type that does not match the definition) is an error, not a guess.
"""

from __future__ import annotations

import random
import re

UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


class WorkflowError(ValueError):
    pass


def _kind(spec: list) -> str:
    """An input's type as the frontend sees it: a list of options is a COMBO."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_inputs(definition: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) of the node's widgets, in the order the frontend creates them."""
    order = definition.get("input_order") or {s: list(definition["input"].get(s, {})) for s in ("required",
                                                                                               "optional")}
    out = []
    for section in ("required", "optional"):
        specs = definition["input"].get(section, {})
        for name in order.get(section, []):
            spec = specs[name]
            if _kind(spec) in WIDGET_TYPES and not _options(spec).get("forceInput"):
                out.append((name, spec, section == "optional"))
    return out


def widget_default(spec: list):
    """The value the frontend gives a new widget: the input's default, else a combo's first option."""
    options = _options(spec)
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
    if _kind(spec) == "COMBO" and choices:
        return choices[0]
    raise WorkflowError(f"widget spec {spec!r} has no default.")


def has_control_widget(name: str, spec: list) -> bool:
    """The frontend adds a control_after_generate combo after INT and COMBO widgets that ask for one; an INT
    named seed or noise_seed gets one unless its options say control_after_generate: false."""
    kind, control = _kind(spec), _options(spec).get("control_after_generate")
    if kind == "INT":
        return bool(control) if control is not None else name in ("seed", "noise_seed")
    return kind == "COMBO" and bool(control)


def _check_type(node: dict, name: str, spec: list, value) -> None:
    kind = _kind(spec)
    ok = {
        "INT": isinstance(value, int) and not isinstance(value, bool),
        "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
        "COMBO": isinstance(value, str),
    }[kind]
    if not ok:
        raise WorkflowError(f"node {node['id']} ({node['type']}): widget {name!r} is {kind} but the workflow "
                            f"has {value!r}; widgets_values are out of step with the node definition.")


def process_dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    """The frontend's processDynamicPrompt (Comfy.DynamicPrompts), applied when a prompt is queued."""
    rng = rng or random.Random(0)
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)

    def expand(s: str) -> str:
        out, i = [], 0

        def choice_block() -> str:
            nonlocal i
            options, cur, depth = [], "", 0
            while i < len(s):
                ch = s[i]
                i += 1
                if ch == "\\":
                    cur += "\\" + (s[i] if i < len(s) else "")
                    i += 1
                    continue
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    if not depth:
                        break
                    depth -= 1
                elif ch == "|" and not depth:
                    options.append(cur)
                    cur = ""
                    continue
                cur += ch
            options.append(cur)
            return expand(rng.choice(options))

        while i < len(s):
            ch = s[i]
            i += 1
            if ch == "\\":
                out.append("\\" + (s[i] if i < len(s) else ""))
                i += 1
            elif ch == "{":
                out.append(choice_block())
            else:
                out.append(ch)
        return re.sub(r"\\([{}|])", r"\1", "".join(out))

    return expand(text)


def link_problems(workflow: dict) -> list[str]:
    """Every link joins two existing nodes at existing slots, and both ends list it."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    problems = []
    links = {}
    for link in workflow["links"]:
        link_id, src, src_slot, dst, dst_slot, _type = link
        links[link_id] = link
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id} joins missing node(s) {src} -> {dst}")
            continue
        outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if src_slot >= len(outs) or link_id not in (outs[src_slot].get("links") or []):
            problems.append(f"link {link_id}: node {src} output {src_slot} does not list it")
        if dst_slot >= len(ins) or ins[dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: node {dst} input {dst_slot} does not hold it")
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in links:
                problems.append(f"node {node['id']} input {slot['name']!r} names missing link {slot['link']}")
        for slot in node.get("outputs", []):
            for link_id in slot.get("links") or []:
                if link_id not in links:
                    problems.append(f"node {node['id']} output {slot['name']!r} names missing link {link_id}")
    return problems


def ui_to_api(workflow: dict, object_info: dict, rng: random.Random | None = None) -> dict:
    """The API-format prompt for a UI-format workflow ({node id: {class_type, inputs, _meta}})."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("subgraphs are not supported by this converter.")
    problems = link_problems(workflow)
    if problems:
        raise WorkflowError("; ".join(problems))
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in UI_ONLY_TYPES:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"node {node['id']} ({kind}) is muted or bypassed; not supported.")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']}: type {kind!r} is not in /object_info (missing pack?).")
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise WorkflowError(f"node {node['id']} ({kind}): widgets_values as a dict is not supported.")
        for name, spec, optional in widget_inputs(object_info[kind]):
            if not values and optional:
                # saved before this optional input existed: the frontend gives the widget its default and sends it
                inputs[name] = widget_default(spec)
                continue
            if not values:
                raise WorkflowError(f"node {node['id']} ({kind}): no widget value left for {name!r}.")
            value = values.pop(0)
            _check_type(node, name, spec, value)
            if _options(spec).get("dynamicPrompts") and isinstance(value, str):
                value = process_dynamic_prompt(value, rng)
            inputs[name] = value
            if has_control_widget(name, spec):
                if not values or values[0] not in CONTROL_VALUES:
                    raise WorkflowError(f"node {node['id']} ({kind}): {name!r} needs a control_after_generate "
                                        f"value next, found {values[:1]}.")
                values.pop(0)  # UI-only: what to do to the value after queueing
        if values:
            raise WorkflowError(f"node {node['id']} ({kind}): {len(values)} widget value(s) left over: {values}.")
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            _, src, src_slot, _, _, _ = links[slot["link"]]
            source = next(n for n in workflow["nodes"] if n["id"] == src)
            if source["type"] in UI_ONLY_TYPES or source["type"] not in object_info:
                raise WorkflowError(f"node {node['id']} input {slot['name']!r} comes from a {source['type']} "
                                    "node; reroutes and legacy primitives are not supported.")
            inputs[slot["name"]] = [str(src), src_slot]
        title = node.get("title") or object_info[kind].get("display_name") or kind
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}
    return prompt
