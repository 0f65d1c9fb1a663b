"""`flowd flow start | chain | show`: flows and chains; `flowd constraints`: constraint groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flowd.cli.common import ConfigOpt, DbOpt, JsonOpt, manager, parse_labels, parse_payload
from flowd.errors import BadInput

flow_app = typer.Typer(help="Flows (steps in parallel, then one join task) and chains.", no_args_is_help=True)

Steps = Annotated[
    list[str], typer.Option("--step", help="NAME or NAME:JSON-object (repeatable, in order)", show_default=False)
]
Labels = Annotated[
    list[str] | None, typer.Option("--label", help="K=V for every task (repeatable)", show_default=False)
]
Name = Annotated[str | None, typer.Option("--name", help="a name shown in errors and `flow show`", show_default=False)]


def parse_step(text: str, what: str = "--step") -> dict[str, Any]:
    """`resize` or `resize:{"w": 100}` (NAME, or NAME:JSON-object payload)."""
    # task names may contain ':' but never '{': the payload starts at the first ':{'
    at = text.find(":{")
    if at < 0:
        return {"name": text}
    name, raw = text[:at], text[at + 1 :]
    try:
        payload = parse_payload(raw)
    except BadInput as e:
        raise BadInput(f"{what} {text!r}: {e}") from e
    return {"name": name, "payload": payload}


def _emit(m: Any, flow_id: int, json_: bool) -> None:
    from flowd.cli import render

    render.emit_json(m.get_flow(flow_id)) if json_ else render.line(str(flow_id))


@flow_app.command("start")
def start(
    step: Steps,
    join: Annotated[str, typer.Option("--join", help="NAME or NAME:JSON: the task created when the steps end")],
    failure_policy: Annotated[
        str, typer.Option("--failure-policy", help="continue, or abort at the first failed step")
    ] = "continue",
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds: then join with timed_out", show_default=False)
    ] = None,
    entity: Annotated[
        str | None, typer.Option("--entity", help="TYPE:ID the flow is about", show_default=False)
    ] = None,
    name: Name = None,
    label: Labels = None,
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start a flow: every --step runs in parallel, then the --join task gets their results; prints its id."""
    steps = [parse_step(s) for s in step]
    join_def = parse_step(join, "--join")
    m = manager(db, config)
    fid = m.start_flow(
        steps,
        join_def,
        failure_policy=failure_policy,
        timeout=timeout,
        entity=entity,
        name=name,
        labels=parse_labels(label),
    )
    _emit(m, fid, json_)


@flow_app.command("chain")
def chain(
    step: Steps,
    name: Name = None,
    entity: Annotated[
        str | None, typer.Option("--entity", help="TYPE:ID the chain is about", show_default=False)
    ] = None,
    label: Labels = None,
    json_: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start a chain: the steps run one after another, each given the previous result; prints its id."""
    m = manager(db, config)
    fid = m.start_chain([parse_step(s) for s in step], name=name, labels=parse_labels(label), entity=entity)
    _emit(m, fid, json_)


@flow_app.command("show")
def show(flow_id: int, json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Show a flow: its outcome, each step's state, and the join task."""
    from flowd.cli import render

    doc = manager(db, config).get_flow(flow_id)
    render.emit_json(doc) if json_ else render.flow_detail(doc)


def register(app: typer.Typer) -> None:
    @app.command("entity")
    def entity_(
        entity_type: str,
        entity_id: str,
        limit: Annotated[int, typer.Option("--limit")] = 100,
        json_: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """What is happening to one object: its tasks, scheduled → processing → executed | failed."""
        from flowd.cli import render

        doc = manager(db, config).entity(entity_type, entity_id, limit)
        render.emit_json(doc) if json_ else render.entity(doc)

    @app.command("constraints")
    def constraints_(json_: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
        """Constraint groups and each key in use: running, pending, cooldown left."""
        from flowd.cli import render

        doc = manager(db, config).constraints()
        render.emit_json(doc) if json_ else render.constraints(doc)
