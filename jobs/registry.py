"""Look after the registered models: list versions, show one, move or remove an alias.

    python -m jobs.registry list [--name pdml-scene-parser]
    python -m jobs.registry show models:/pdml-scene-parser@champion
    python -m jobs.registry promote models:/pdml-scene-parser/3 [--alias champion]
    python -m jobs.registry demote [--alias champion] [--name pdml-scene-parser]

A model may be named models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model.
``promote`` is your explicit choice: it moves the alias whatever the scores (training
moves @champion only to a better model). The store is the config's mlflow.tracking_uri.
"""

from __future__ import annotations

import argparse
import math
import time

from jobs.cli import add_config_arguments, config_from_args, run_cli

# Training settings that tell two versions apart, as shown by ``show``.
CONFIG_SUMMARY = (
    ("data", ("dataset",)),
    ("model", ("backbone", "output_stride", "head", "pretrained")),
    ("train", ("supervision", "epochs", "batch_size", "optimizer", "lr")),
    ("loss", ("margin", "alpha", "beta", "pdml_weight", "mining", "pairing")),
    ("extension", ("method", "threshold", "window", "start_epoch")),
)


def _when(timestamp_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp_ms / 1000))


def _score(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to their widest cell; the columns in ``right`` aligned right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).rjust(w) if k in right else str(cell).ljust(w)
                         for k, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def list_command(client, args, cfg) -> None:
    from pdml_ray.service.registry.describe import list_versions

    name = args.name or cfg.mlflow.registered_model
    rows = list_versions(client, name)
    print(f"registered model {name} in {cfg.mlflow.tracking_uri}\n")
    print(table(["version", "val mIoU", "run id", "created", "aliases"],
                [[str(row.version), _score(row.val_miou), row.run_id or "-", _when(row.created_ms),
                  " ".join(f"@{alias}" for alias in row.aliases)] for row in rows],
                right={0, 1}))


def show_command(client, args, cfg) -> None:
    from pdml_ray.service.registry.describe import describe_model

    summary = describe_model(client, cfg.mlflow.tracking_uri, args.model)
    version, run = summary.version, summary.run
    print(f"model      models:/{version.name}/{version.version}  "
          f"({' '.join(f'@{a}' for a in summary.aliases) or 'no alias'})")
    print(f"created    {_when(version.creation_timestamp)}")
    run_text = version.run_id or "-"
    if run is not None:
        run_text += f"  ({run.info.run_name}, {run.info.status.lower()})"
    elif version.run_id:
        run_text += "  (run deleted)"
    print(f"run        {run_text}")
    print(f"val mIoU   {_score(summary.val_miou)}")
    print("\ntraining config")
    config = summary.config
    for section, keys in CONFIG_SUMMARY:
        values = config.get(section, {})
        shown = [f"{key}={values[key]}" for key in keys if key in values]
        print(f"  {section:<10} {'  '.join(shown)}")
    classes = summary.metadata.get("classes", [])
    ious = summary.metadata.get("per_class_iou", [])
    if classes and ious:
        print("\nper-class IoU (validation, at registration)")
        print(table(["class", "IoU"], [[name, _score(iou)] for name, iou in zip(classes, ious)],
                    right={1}))


def promote_command(client, args, cfg) -> None:
    from pdml_ray.service.registry.aliases import move_alias

    alias = args.alias or cfg.mlflow.champion_alias
    version, previous = move_alias(client, args.model, alias)
    before = f"was version {previous}" if previous else "was unset"
    print(f"models:/{version.name}@{alias} -> version {version.version} ({before})")


def demote_command(client, args, cfg) -> None:
    from pdml_ray.service.registry.aliases import remove_alias

    name = args.name or cfg.mlflow.registered_model
    alias = args.alias or cfg.mlflow.champion_alias
    previous = remove_alias(client, name, alias)
    print(f"models:/{name}@{alias} removed (it pointed at version {previous})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="versions with val mIoU, run, date and aliases")
    listing.add_argument("--name", help="registered model (default: mlflow.registered_model)")
    show = commands.add_parser("show", help="one version: scores, training config, aliases")
    show.add_argument("model", metavar="MODEL_URI")
    promote = commands.add_parser("promote", help="point an alias at a version")
    promote.add_argument("model", metavar="MODEL_URI")
    promote.add_argument("--alias", help="default: mlflow.champion_alias (champion)")
    demote = commands.add_parser("demote", help="remove an alias")
    demote.add_argument("--alias", help="default: mlflow.champion_alias (champion)")
    demote.add_argument("--name", help="registered model (default: mlflow.registered_model)")
    for command in (listing, show, promote, demote):
        add_config_arguments(command)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from pdml_ray.service.train.preflight import check_store_readable
    from pdml_ray.service.registry.model_uri import registry_client

    check_store_readable(cfg.mlflow.tracking_uri)  # seconds, not MLflow's minutes of retries
    client = registry_client(cfg.mlflow.tracking_uri)
    {"list": list_command, "show": show_command, "promote": promote_command,
     "demote": demote_command}[args.command](client, args, cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
