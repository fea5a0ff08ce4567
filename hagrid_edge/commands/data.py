"""``hagrid-edge data check|stats|convert|download``: HaGRID annotations and archives."""

from __future__ import annotations

import argparse
import json
import sys

from hagrid_edge.flags import non_negative_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check, summarise, convert or download HaGRID data",
                       description="HaGRID annotations (v1, 2.0 and v2 formats, both folder layouts) and archives.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    c = data_sub.add_parser("check", help="validate every annotation entry (and image)",
                            description="Validate every entry; list each problem as file:image_id: what.")
    c.add_argument("root", help="HaGRID data root")
    c.add_argument("--split", action="append", help="only this split (repeatable; default: all)")
    c.add_argument("--images", action="store_true", help="also decode every image fully")
    c.set_defaults(func=run_check)

    s = data_sub.add_parser("stats", help="images, boxes and users per split and class")
    s.add_argument("root", help="HaGRID data root")
    s.add_argument("--split", action="append", help="only this split (repeatable; default: all)")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(func=run_stats)

    v = data_sub.add_parser("convert", help="write COCO JSON or YOLO labels",
                            description="COCO: <out>/<split>.json (pixel boxes). YOLO: <out>/labels/<split>/, "
                                        "<out>/images/<split>/ (links to the images) and <out>/data.yaml.")
    v.add_argument("root", help="HaGRID data root")
    v.add_argument("--to", required=True, choices=("coco", "yolo"))
    v.add_argument("--mode", default="gestures", choices=("gestures", "hands"),
                   help="gestures: the 18 gestures + no_gesture; hands: every box is 'hand'")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--split", action="append", help="only this split (repeatable; default: all; "
                                                    "train/val of a v1 root are derived by user)")
    v.add_argument("--targets", nargs="+", metavar="GESTURE", help="only these gesture files")
    v.add_argument("--drop-no-gesture", action="store_true",
                   help="leave out no_gesture boxes (their images stay, as negatives)")
    v.set_defaults(func=run_convert)

    d = data_sub.add_parser("download", help="download and unpack HaGRID archives (resumable)",
                            description="Flags as HaGRID's download.py. v1 selects archives by split "
                                        "(--train/--test/--subset); v2 archives hold every split.")
    d.add_argument("--train", action="store_true", help="v1: the train_val split")
    d.add_argument("--test", action="store_true", help="v1: the test split")
    d.add_argument("--subset", action="store_true", help="v1: the subsample (100 images per gesture)")
    d.add_argument("-a", "--annotations", action="store_true", help="download annotations")
    d.add_argument("-d", "--dataset", action="store_true", help="download images")
    d.add_argument("-t", "--targets", nargs="+", metavar="GESTURE", help="gestures (default: all of the release)")
    d.add_argument("-p", "--save_path", "--save-path", default="~/hagrid/dataset/", help="where to unpack")
    d.add_argument("--release", choices=("v1", "v2"), default="v1",
                   help="v1: HaGRID 2022 (default, the seed's archives); v2: HaGRIDv2 (HaGRID 2.0 images + 15 gestures)")
    d.add_argument("--base-url", help="mirror replacing the release's base URL (or $HAGRID_EDGE_BASE_URL)")
    d.add_argument("--checksums", help="sha256sum-style file ('<hex>  <archive name>') to verify against")
    d.add_argument("--no-extract", action="store_true", help="keep the .zip archives, do not unpack")
    d.add_argument("--retries", type=non_negative_int, default=3, help="resume attempts per archive, >= 0 (default 3)")
    d.set_defaults(func=run_download)


def run_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hagrid_edge.data.check import check_root

    def progress(samples):
        return tqdm(samples, desc="images", unit="img", leave=False, disable=not sys.stderr.isatty())

    report = check_root(args.root, args.split, images=args.images, progress=progress)
    print(report.summary())
    for problem in report.problems:
        print(problem)
    return 0 if report.ok else 1


def run_stats(args: argparse.Namespace) -> int:
    from hagrid_edge.data.stats import format_stats, root_stats

    stats = root_stats(args.root, args.split)
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hagrid_edge.data.convert import convert

    def progress(samples):
        return tqdm(samples, desc=args.to, unit="img", leave=False, disable=not sys.stderr.isatty())

    for path in convert(args.root, args.to, args.mode, args.out, args.split, args.targets, progress,
                        drop_no_gesture=args.drop_no_gesture):
        print(path)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from hagrid_edge.data.download import V2_TARGETS, archives, download, read_checksums
    from hagrid_edge.labels import GESTURES

    targets = args.targets or (GESTURES if args.release == "v1" else V2_TARGETS)
    items = archives(args.release, train=args.train, test=args.test, subset=args.subset,
                     annotations=args.annotations, dataset=args.dataset, targets=targets)
    sums = read_checksums(args.checksums) if args.checksums else None
    done = download(items, args.save_path, args.release, args.base_url, sums, not args.no_extract, args.retries,
                    progress=sys.stderr.isatty())
    print(f"{len(done)} archive(s) fetched, {len(items) - len(done)} already there; data under {args.save_path}")
    return 0
