"""A small 2-D physics world (pymunk), seen from above, in which an agent pushes, pokes and grasps.

No robot can be reached here, so this world stands in for Pinto et al.'s (2016): objects of four
shapes (circle, square, triangle, bar), several sizes and three materials (rubber, wood, metal:
each its own density, friction and colour) lie on a floor with Coulomb friction. One interaction
per record, on one object of a scene of 1 to 3:

- push: a small pusher moves in a straight line from a start point for a fixed distance; the
  outcome is the object's displacement (and rotation) once everything has come to rest;
- poke: a fixed impulse at a point near the object's centre (normal, 0.2 of its radius: on a
  thin bar or a triangle's tip the point may lie just outside the outline, where the impulse
  still acts on the body as if through a rigid lever); the outcome is how far the object slides;
- grasp: a parallel-jaw gripper of fixed opening closes along an angle at a point; a grasp
  succeeds when both jaws reach the object without first hitting anything and each contact
  normal lies inside the friction cone of its jaw's push (an antipodal pinch).

Written to OUT:

    OUT/images/SHAPE-MATERIAL/000000.png  the image before the action: a window of the scene
                                          centred on the point of action (the crop Pinto et al. feed
                                          their network), in the folder of the object acted on
    OUT/interactions.csv                  image,kind,angle,success,dx,dy,distance,rotation,shape,
                                          material,radius: angle of the grasp, push or poke
                                          (radians, image axes: x right, y down); success of a
                                          grasp (0/1); displacement of the object in window
                                          widths (push, poke); rotation in radians
    OUT/objects/{train,test}/SHAPE-MATERIAL/N.png  single objects at the same scale, to evaluate
                                                   (kNN on object identity and material)

Every record is a function of (seed, its number) alone.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..console import progress_bar, warn
from ..errors import UserError
from . import new_output_folder

SHAPES = ("circle", "square", "triangle", "bar")
# density (mass per unit area), floor friction, surface friction, colour
MATERIALS = {"rubber": (1.0, 0.9, 1.0, (200, 60, 50)), "wood": (0.6, 0.5, 0.6, (190, 140, 80)),
             "metal": (2.5, 0.25, 0.3, (110, 125, 160))}
KINDS = ("grasp", "push", "poke")
GRAVITY = 200.0  # units/s^2, for the floor's friction force
STEP = 1 / 120  # seconds per physics step


@dataclass
class WorldSettings:
    size: int = 32  # side of the images, pixels
    window: float = 64.0  # side of the scene window an image shows, world units
    arena: float = 128.0  # side of the area objects are placed in
    opening: float = 26.0  # gripper opening: wide objects fit one way and not another
    push_distance: float = 24.0
    poke_impulse: float = 8000.0
    seed: int = 0


@dataclass
class Thing:
    shape: str
    material: str
    radius: float  # circumradius, world units
    position: tuple[float, float]
    angle: float
    colour: tuple[int, int, int]


def outline(shape: str, radius: float) -> list[tuple[float, float]]:
    """Vertices in the object's own frame (a circle's is its bounding square, unused)."""
    if shape == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a)) for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    half_w, half_h = {"square": (0.7, 0.7), "bar": (0.95, 0.35), "circle": (1, 1)}[shape]
    w, h = half_w * radius, half_h * radius
    return [(-w, -h), (w, -h), (w, h), (-w, h)]


def random_scene(rng: np.random.Generator, settings: WorldSettings, count: int) -> list[Thing]:
    """`count` objects at random places that do not overlap (by circumradius)."""
    things: list[Thing] = []
    while len(things) < count:
        radius = float(rng.uniform(8, 14))
        position = tuple(float(v) for v in rng.uniform(radius + 4, settings.arena - radius - 4, 2))
        if all(math.dist(position, t.position) > radius + t.radius + 6 for t in things):
            material = str(rng.choice(list(MATERIALS)))
            colour = tuple(int(c) for c in np.clip(np.asarray(MATERIALS[material][3]) + rng.integers(-20, 21, 3), 0, 255))
            things.append(Thing(str(rng.choice(SHAPES)), material, radius, position, float(rng.uniform(0, 2 * math.pi)), colour))
    return things


# ---------------------------------------------------------------------------------------------
# Physics


def require_pymunk():
    """The optional physics engine, or a one-line error saying how to install it."""
    try:
        import pymunk
    except ImportError:
        raise UserError("the interaction world needs pymunk: pip install 'selfsup[video]'") from None
    return pymunk


class World:
    """The things of a scene as pymunk bodies on a floor with friction."""

    def __init__(self, things: list[Thing]):
        pymunk = require_pymunk()
        self.space = pymunk.Space()
        self.space.iterations = 30
        self.bodies, self.shapes = [], []
        for thing in things:
            density, floor, surface, _ = MATERIALS[thing.material]
            if thing.shape == "circle":
                mass = density * math.pi * thing.radius ** 2
                body = pymunk.Body(mass, pymunk.moment_for_circle(mass, 0, thing.radius))
                shape = pymunk.Circle(body, thing.radius)
            else:
                vertices = outline(thing.shape, thing.radius)
                mass = density * abs(pymunk.area_for_poly(vertices))
                body = pymunk.Body(mass, pymunk.moment_for_poly(mass, vertices))
                shape = pymunk.Poly(body, vertices)
            body.position, body.angle, shape.friction = thing.position, thing.angle, surface
            self.space.add(body, shape)
            for joint in (pymunk.PivotJoint(self.space.static_body, body, (0, 0), (0, 0)),
                          pymunk.GearJoint(self.space.static_body, body, 0.0, 1.0)):
                joint.max_bias = 0  # velocity only: Coulomb friction with the floor
                joint.max_force = floor * mass * GRAVITY * (1.0 if isinstance(joint, pymunk.PivotJoint) else 0.5 * thing.radius)
                self.space.add(joint)
            self.bodies.append(body)
            self.shapes.append(shape)

    def poses(self) -> np.ndarray:
        """(n, 3) x, y, angle of every object."""
        return np.asarray([(b.position.x, b.position.y, b.angle) for b in self.bodies])

    def settle(self, seconds: float = 2.0) -> None:
        for _ in range(int(seconds / STEP)):
            self.space.step(STEP)

    def push(self, start, direction: float, distance: float, speed: float = 60.0) -> None:
        pymunk = require_pymunk()
        pusher = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        pusher.position = start
        pusher.velocity = (speed * math.cos(direction), speed * math.sin(direction))
        tip = pymunk.Circle(pusher, 2.5)
        tip.friction = 0.5
        self.space.add(pusher, tip)
        self.settle(distance / speed)
        self.space.remove(pusher, tip)
        self.settle()

    def poke(self, target: int, point, direction: float, impulse: float) -> None:
        self.bodies[target].apply_impulse_at_world_point((impulse * math.cos(direction), impulse * math.sin(direction)), point)
        self.settle()

    def grasp(self, target: int, point, angle: float, opening: float) -> bool:
        """Close two jaws along `angle` towards `point`; success as described in the module doc."""
        pymunk = require_pymunk()
        axis = np.asarray([math.cos(angle), math.sin(angle)])
        contacts = []
        for side in (1.0, -1.0):  # each jaw moves towards the point, against `side * axis`
            jaw = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
            jaw.angle = angle
            plate = pymunk.Poly.create_box(jaw, (1.0, 10.0))
            hit = None
            for travel in np.arange(0.0, opening / 2 + 0.25, 0.25):
                jaw.position = tuple(np.asarray(point) + side * axis * (opening / 2 - travel))
                plate.cache_bb()
                touching = self.space.shape_query(plate)
                if touching:
                    hit = (travel, touching)
                    break
            if hit is None or hit[0] == 0.0 or len(hit[1]) != 1 or hit[1][0].shape is not self.shapes[target]:
                return False  # missed, landed on something, or hit another object first
            contacts.append((side, hit[1][0].contact_point_set.normal))
        cone = math.cos(math.atan(self.shapes[target].friction))
        for side, normal in contacts:  # the normal points from the jaw into the object
            pushing = -side * axis
            if float(np.dot(np.asarray(normal), pushing)) < cone:
                return False  # the contact slips: outside the friction cone
        return True


# ---------------------------------------------------------------------------------------------
# Pictures and records


def render(things: list[Thing], poses: np.ndarray, centre, settings: WorldSettings,
           floor: Image.Image) -> Image.Image:
    """The window of the scene centred on `centre`, drawn at 4x and reduced (anti-aliased)."""
    big = 4 * settings.size
    scale = big / settings.window
    img = floor.copy()
    draw = ImageDraw.Draw(img)

    def to_pixels(points):
        return [((x - centre[0]) * scale + big / 2, (y - centre[1]) * scale + big / 2) for x, y in points]

    for thing, (x, y, angle) in zip(things, poses):
        edge = tuple(c // 2 for c in thing.colour)
        if thing.shape == "circle":
            (left, top), (right, bottom) = to_pixels([(x - thing.radius, y - thing.radius), (x + thing.radius, y + thing.radius)])
            draw.ellipse((left, top, right, bottom), fill=thing.colour, outline=edge, width=3)
        else:
            c, s = math.cos(angle), math.sin(angle)
            corners = [(x + c * u - s * v, y + s * u + c * v) for u, v in outline(thing.shape, thing.radius)]
            draw.polygon(to_pixels(corners), fill=thing.colour, outline=edge, width=3)
    return img.resize((settings.size, settings.size), Image.BOX)


def _floor(rng: np.random.Generator, settings: WorldSettings, backgrounds: list[Image.Image]) -> Image.Image:
    big = 4 * settings.size
    if backgrounds:
        return backgrounds[rng.integers(len(backgrounds))].resize((big, big), Image.BILINEAR)
    shade = int(rng.integers(120, 170))
    noise = rng.integers(-8, 9, (big // 4, big // 4, 1))
    return Image.fromarray(np.clip(shade + noise, 0, 255).astype(np.uint8).repeat(3, 2)).resize((big, big))


def simulate(index: int, settings: WorldSettings, backgrounds: list[Image.Image] = ()) -> tuple[Image.Image, dict]:
    """Record number `index`: the image before the action and what happened."""
    rng = np.random.default_rng([settings.seed, index])
    things = random_scene(rng, settings, int(rng.integers(1, 4)))
    thing, kind = things[0], KINDS[index % len(KINDS)]
    centre = np.asarray(thing.position)
    world = World(things)
    before = world.poses()
    angle = float(rng.uniform(0, 2 * math.pi))
    success = ""
    if kind == "grasp":
        angle = angle % math.pi  # a parallel gripper is symmetric
        point = centre + rng.normal(0, 0.25 * thing.radius, 2)
        success = int(world.grasp(0, tuple(point), angle, settings.opening))
    elif kind == "push":
        along, across = np.asarray([math.cos(angle), math.sin(angle)]), np.asarray([-math.sin(angle), math.cos(angle)])
        point = centre - along * (thing.radius + 6) + across * rng.uniform(-0.6, 0.6) * thing.radius
        world.push(tuple(point), angle, settings.push_distance)
    else:
        point = centre + rng.normal(0, 0.2 * thing.radius, 2)
        world.poke(0, tuple(point), angle, settings.poke_impulse)
    moved = world.poses()[0] - before[0]
    image = render(things, before, point, settings, _floor(rng, settings, list(backgrounds)))
    dx, dy = moved[:2] / settings.window
    record = {"kind": kind, "angle": round(angle, 6), "success": success, "dx": round(float(dx), 6),
              "dy": round(float(dy), 6), "distance": round(float(math.hypot(dx, dy)), 6),
              "rotation": round(float(math.remainder(moved[2], 2 * math.pi)), 6), "shape": thing.shape,
              "material": thing.material, "radius": round(thing.radius, 3)}
    return image, record


def object_image(index: int, settings: WorldSettings, backgrounds: list[Image.Image] = ()) -> tuple[Image.Image, str]:
    """A single object in the middle of a window, as in the records; classes in turn."""
    rng = np.random.default_rng([settings.seed, 1_000_000 + index])
    shape, material = SHAPES[index % len(SHAPES)], list(MATERIALS)[index // len(SHAPES) % len(MATERIALS)]
    thing = random_scene(rng, settings, 1)[0]
    thing = Thing(shape, material, thing.radius, (0.0, 0.0), thing.angle,
                  tuple(int(c) for c in np.clip(np.asarray(MATERIALS[material][3]) + rng.integers(-20, 21, 3), 0, 255)))
    offset = rng.normal(0, 0.2 * thing.radius, 2)
    image = render([thing], np.asarray([(0.0, 0.0, thing.angle)]), offset, settings, _floor(rng, settings, list(backgrounds)))
    return image, f"{shape}-{material}"


def _load_backgrounds(path, size: int) -> list[Image.Image]:
    """The images of the folder (or tar) `path`, square, at the drawing resolution."""
    if not path:
        return []
    from ..data import open_images

    return [Image.fromarray(np.asarray(image)) for image in open_images(path, 4 * size, show_progress=False).images]


def record_interactions(out: str | Path, count: int, objects: int, settings: WorldSettings,
                        backgrounds: str | None = None, show_progress: bool = True) -> dict:
    """Write `count` interaction records and `objects` single-object images into `out`."""
    if count < 1 or objects < 0:
        raise UserError("synth interaction: --count must be at least 1 and --objects at least 0")
    require_pymunk()  # before a folder or a progress bar is made
    floors = _load_backgrounds(backgrounds, settings.size)
    out = new_output_folder(out)
    rows = []
    bar = progress_bar(count + objects, "simulating", unit="rec", enabled=show_progress)
    for i in range(count):
        image, record = simulate(i, settings, floors)
        name = f"{record['shape']}-{record['material']}/{i:06d}.png"
        (out / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / "images" / name)
        rows.append({"image": name, **record})
        bar.update(1)
    with open(out / "interactions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    classes = len(SHAPES) * len(MATERIALS)  # object_image draws them in turn
    if 0 < objects < 2 * classes:
        warn(f"with --objects {objects}, fewer than 2 per class, some of the {classes} classes have no test image "
             f"and `selfsup eval` on OUT/objects refuses it; use --objects {2 * classes} or more")
    for j in range(objects):
        image, label = object_image(j, settings, floors)
        nth_of_class = j // classes  # the second of each class and every fifth after it: a test image
        folder = out / "objects" / ("test" if nth_of_class % 5 == 1 else "train") / label
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{j:06d}.png")
        bar.update(1)
    bar.close()
    return {"out": str(out), "interactions": count, "objects": objects}
