"""``sparseseg annotate``: paint the chosen slices of a selection in napari."""

from __future__ import annotations

import argparse

HELP = "paint the chosen slices of a selection in napari (needs: pip install sparseseg[napari])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "selection", metavar="SEL", help="selection folder (sparseseg select --out)"
    )
    parser.add_argument(
        "--painted",
        metavar="DIR",
        default=None,
        help="folder for the painted maps CASE.nii.gz and progress.json (default SEL/painted)",
    )
    parser.add_argument(
        "--dataset",
        metavar="DIR",
        default=None,
        help="the dataset selected from (default: the folder the selection records)",
    )


def run(args: argparse.Namespace) -> int:
    from sparseseg.annotate.session import AnnotationProject
    from sparseseg.errors import InputError

    project = AnnotationProject(args.selection, args.painted, args.dataset)  # bad input: exit 2
    try:
        import napari

        from sparseseg.annotate.widget import AnnotateWidget
    except ImportError as exc:
        raise InputError(
            f"napari is not installed ({exc}); install it with: pip install 'sparseseg[napari]'"
        ) from None
    viewer = napari.Viewer(title=f"sparseseg annotate {args.selection}")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="sparseseg annotate", area="right")
    widget.open(args.selection, project.painted, project.dataset.root)
    napari.run()
    widget.save_on_exit()  # a painting changed since the last save
    print(f"paintings in {project.painted}")
    return 0
