"""`selfsup synth motion|interaction --from PATH --out DIR`: the synthetic sources."""
from __future__ import annotations

import json
import math

from ..console import plural


def add_synth_parser(commands, common) -> None:
    p = commands.add_parser("synth", help="make synthetic clips with motor signals, or interaction records")
    kinds = p.add_subparsers(dest="kind", required=True)

    m = kinds.add_parser("motion", help="clips of a camera moving over still images, with a motion CSV per clip")
    m.add_argument("--from", dest="source", required=True, help="folder (or tar) of still images")
    m.add_argument("--out", required=True, help="folder to write the clips into")
    m.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    m.add_argument("--size", type=int, default=32, help="side of the frames in pixels (default 32)")
    m.add_argument("--view", type=float, default=0.6, help="side of the view as a fraction of the image (default 0.6)")
    m.add_argument("--speed", type=float, default=1.0, help="scales every motion (default 1)")
    m.add_argument("--motions", help="comma-separated subset of: still, pan-left, pan-right, tilt-up, tilt-down, "
                                     "zoom-in, zoom-out, roll-left, roll-right (default: all)")
    m.add_argument("--clips-per-image", type=int, default=1)
    m.add_argument("--max-images", type=int, default=0, help="use at most this many images, spread over the classes")
    m.add_argument("--seed", type=int, default=0)
    common(m)
    m.set_defaults(run=_motion)

    i = kinds.add_parser("interaction", help="a 2-D physics world: pushes, pokes and grasps with their outcomes")
    i.add_argument("--from", dest="source", help="optional folder of background images (default: a plain floor)")
    i.add_argument("--out", required=True, help="folder to write the records into")
    i.add_argument("--count", type=int, default=3000, help="interactions to record (default 3000)")
    i.add_argument("--objects", type=int, default=600, help="single-object images for evaluation (default 600)")
    i.add_argument("--size", type=int, default=32, help="side of the images in pixels (default 32)")
    i.add_argument("--seed", type=int, default=0)
    common(i)
    i.set_defaults(run=_interaction)


def _check_ranges(kind: str, checks: list[tuple[str, object, bool, str]]) -> None:
    """One line for the first (flag, value, within its range, the range) that is out of range."""
    from ..errors import UserError

    for flag, value, ok, valid in checks:
        if not ok:
            raise UserError(f"synth {kind}: {flag} {value} is out of range; give {valid}")


def _motion(args) -> int:
    from .motion import MotionSettings, make_motion_clips

    _check_ranges("motion", [
        ("--frames", args.frames, args.frames >= 2, "2 or more"),
        ("--size", args.size, args.size >= 4, "4 or more pixels"),
        ("--view", args.view, 0 < args.view <= 1, "a fraction above 0 and at most 1"),
        ("--speed", args.speed, 0 <= args.speed < math.inf, "a finite number, 0 or more"),
        ("--clips-per-image", args.clips_per_image, args.clips_per_image >= 1, "1 or more"),
        ("--max-images", args.max_images, args.max_images >= 0, "0 (every image) or more"),
        ("--seed", args.seed, args.seed >= 0, "0 or more")])
    settings = MotionSettings(frames=args.frames, size=args.size, view=args.view, speed=args.speed,
                              clips_per_image=args.clips_per_image, max_images=args.max_images, seed=args.seed,
                              **({"motions": tuple(m.strip() for m in args.motions.split(","))} if args.motions else {}))
    result = make_motion_clips(args.source, args.out, settings, show_progress=not args.no_progress)
    print(json.dumps(result) if args.json else
          f"wrote {plural(result['clips'], 'clip')} of {plural(result['frames'], 'frame')} to {result['out']}")
    return 0


def _interaction(args) -> int:
    from .interaction import WorldSettings, record_interactions

    _check_ranges("interaction", [
        ("--size", args.size, args.size >= 4, "4 or more pixels"),
        ("--seed", args.seed, args.seed >= 0, "0 or more")])
    settings = WorldSettings(size=args.size, seed=args.seed)
    result = record_interactions(args.out, args.count, args.objects, settings, backgrounds=args.source,
                                 show_progress=not args.no_progress)
    print(json.dumps(result) if args.json else
          f"wrote {plural(result['interactions'], 'interaction')} and {plural(result['objects'], 'object image')} "
          f"to {result['out']}")
    return 0
