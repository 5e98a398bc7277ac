"""``medfound models``: list, show, import and delete models in the local store."""

from __future__ import annotations

import argparse

from ..registry import delete_model, import_model, list_models, resolve_model_dir, ModelCard, CARD_FILE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, show, import or delete installed models", description=__doc__)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="installed models (default)")
    show = actions.add_parser("show", help="print a model's card")
    show.add_argument("name")
    imp = actions.add_parser("import", help="install a .safetensors model with its card.json (sha256 checked)")
    imp.add_argument("path")
    imp.add_argument("--name", help="install under this name")
    delete = actions.add_parser("delete", help="remove a user model")
    delete.add_argument("name")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    action = args.action or "list"
    if action == "list":
        models = list_models()
        if not models:
            print("no models installed")
        for info in models:
            print(f"{info.name:<24} {info.card.kind:<20} {info.source:<9} {len(info.card.structures):>3} structures  {info.path}")
    elif action == "show":
        print(ModelCard.read(resolve_model_dir(args.name) / CARD_FILE).to_json())
    elif action == "import":
        print(f"installed {import_model(args.path, args.name)}")
    elif action == "delete":
        delete_model(args.name)
        print(f"deleted {args.name}")
    return 0


