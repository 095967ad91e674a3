"""`selfsup cluster` and `selfsup search`: look through a folder of images with an encoder.

    cluster: images --embed--> vectors --k-means--> groups, largest first
             -> OUT/clusters.csv (file, cluster, cosine to its centre) and OUT/clusters.png (the
                images nearest each centre, a row per cluster)
    search:  query images and a gallery --embed--> each query's k most similar gallery images
             -> OUT/neighbours.csv (query, rank, file, cosine) and OUT/neighbours.png
    both:    OUT/summary.json, what --json prints

Embeddings are cached in OUT/embeddings (keyed by the encoder and the files, in steps of 1,024
images), so trying another number of clusters embeds nothing again, other queries against the
same gallery embed only the queries, and a killed embedding resumes. Search compares the
encoder's L2-normalised features by cosine similarity, as `selfsup embed` and `eval retrieval`
do; clustering first centres them on the collection's mean (as `selfsup curate` does), so that the
direction all images share does not pull every group together.
"""
from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path

import numpy as np

from .console import flag, one_command, option, plural, said_as, say, warn, warnings_after_checks
from .curate.embedding import Embedded, embed_source, embedding_dir
from .curate.pictures import draw_rows
from .curate.search import centred, kmeans, nearest
from .data.sources import NOT_FOLDER_NAMES, ImageSource, is_tar_path, open_file_or_source, splits_in
from .errors import UserError
from .outputs import atomic_path, output_folder, refuse_out_inside, removed_if_left_empty, write_summary

CLUSTERS_DRAWN = 32  # rows of clusters.png; the CSV has every cluster
QUERIES_DRAWN = 12  # rows of neighbours.png
EMBED_CHUNK = 1024  # images embedded between two saves: what a killed run can lose


def open_option(path, option: str, opener=open_file_or_source) -> ImageSource:
    """`opener(path)`, its errors named after the option that gave the path (`option`: its name,
    data; said as --data in a command)."""
    try:
        return opener(path)
    except UserError as e:
        raise UserError(f"{said_as(flag(option), option)}: {e}") from None


def refuse_more_than_files(asked: str, count: int, source: ImageSource, advice: str) -> None:
    """`count` images (`asked`: the option as given, --clusters 40) beyond the files of `source`:
    no decoding can make room for them, so they are refused before any."""
    if count > len(source.names):
        raise UserError(f"{asked} is more than the {plural(len(source.names), 'file')} in {source.describe()!r}; "
                        f"{advice}")


def refuse_more_than_decoded(asked: str, count: int, source: ImageSource, embedded: Embedded, advice: str) -> None:
    """`count` images beyond those of `source` that could be decoded: said with the images usable,
    not the files (some of which may be no images)."""
    if count > len(embedded.names):
        raise UserError(f"{asked} is more than the {plural(len(embedded.names), 'image')} in {source.describe()!r} "
                        f"that could be decoded ({len(embedded.skipped):,} of its {plural(len(source.names), 'file')} "
                        f"could not); {advice}")


def embed_sources(checkpoint, sources: dict[str, ImageSource], out: Path, device, backbone, image_size, small_stem,
                  show_progress: bool, bands=None) -> dict[str, Embedded]:
    """Each source's embeddings, cached (and resumable) in OUT/embeddings."""
    from .encoder import load_encoder
    from .train import resolve_device

    device = resolve_device(device)
    largest = max(sources.values(), key=lambda source: len(source.names))  # a random: encoder takes its size
    encoder = load_encoder(checkpoint, image_size=image_size, small_stem=small_stem, backbone=backbone, bands=bands,
                           images=largest)
    folders = {what: embedding_dir(out / "embeddings", encoder, src) for what, src in sources.items()}
    embedded = {what: embed_source(encoder, src, folders[what], device, chunk_size=EMBED_CHUNK,
                                   show_progress=show_progress, desc=f"embedding {what}")
                for what, src in sources.items()}
    # Embeddings of these sources' earlier files or encoders (same name, other key) are removed;
    # others in the folder (another command's) are left alone.
    names = {folder.name.rsplit("-", 1)[0] for folder in folders.values()}
    for stale in (out / "embeddings").iterdir():
        if stale not in folders.values() and stale.name.rsplit("-", 1)[0] in names:
            shutil.rmtree(stale, ignore_errors=True)
    return embedded


def cluster_agreement(clusters: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """How well clusters match known classes: purity (each cluster counted as its commonest
    class) and normalised mutual information, I(clusters; classes) over the mean of the two
    entropies (1: the same partition; near 0: unrelated)."""
    _, cluster_of = np.unique(clusters, return_inverse=True)
    _, class_of = np.unique(classes, return_inverse=True)
    table = np.zeros((cluster_of.max() + 1, class_of.max() + 1))
    np.add.at(table, (cluster_of, class_of), 1)
    joint = table / table.sum()
    p_cluster, p_class = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(p_cluster, p_class)[nonzero])).sum())
    entropies = [-float((p * np.log(p)).sum()) for p in (p_cluster, p_class)]
    mean_entropy = sum(entropies) / 2
    nmi = 1.0 if mean_entropy == 0 else max(0.0, mutual / mean_entropy)  # both one group: identical
    return {"purity": float(table.max(1).sum() / table.sum()), "nmi": nmi}


def folder_classes(names: list[str]) -> list[str] | None:
    """Each image's class folder (the first folder, or the one inside train/, test/ or val/ in a
    dataset with splits); None unless every image lies in one and there are at least two."""
    splits = set(splits_in(names))
    inner = [n.split("/", 1)[1] if splits and n.split("/", 1)[0] in splits else n for n in names]
    if any("/" not in n for n in inner):
        return None
    classes = [n.split("/", 1)[0] for n in inner]
    if NOT_FOLDER_NAMES & set(classes):
        return None
    return classes if len(set(classes)) >= 2 else None


def cosine_to_centre(vectors: np.ndarray, centroids: np.ndarray, assignment: np.ndarray,
                     rows: int = 65_536) -> np.ndarray:
    """(N,) each row's cosine to its cluster's centre, a block of rows at a time: at once, the
    centre of every row and the products would be two more (N, D) copies (4 GB for a million
    512-d embeddings)."""
    return np.concatenate([(vectors[start:start + rows] * centroids[assignment[start:start + rows]]).sum(1)
                           for start in range(0, len(vectors), rows)])


def cluster_images(data, checkpoint, out, clusters: int = 10, seed: int = 0, shown: int = 8,
                   device: str = "auto", backbone: str | None = None, image_size: int | None = None,
                   small_stem: bool | None = None, show_progress: bool = True, bands=None) -> dict:
    """Group the images under `data` into `clusters` by k-means on their embeddings; writes
    OUT/clusters.csv, OUT/clusters.png and OUT/summary.json and returns the summary. `bands`: the
    TIFF bands shown to the encoder (by default those it was trained on)."""
    if clusters < 2:
        raise UserError(f"{option('clusters')} must be at least 2, got {clusters}")
    if shown < 1:
        raise UserError(f"{option('shown')} must be at least 1, got {shown}")
    with removed_if_left_empty(out):  # a refused start leaves no folder behind
        source = open_option(data, "data")
        refuse_out_inside(out, source, data)
        out = output_folder(out)
        refuse_more_than_files(option("clusters", clusters), clusters, source, "choose fewer clusters")
        with warnings_after_checks():  # refused, the error says what the warning of files skipped would
            embedded = embed_sources(checkpoint, {"images": source}, out, device, backbone, image_size, small_stem,
                                     show_progress, bands)["images"]
            refuse_more_than_decoded(option("clusters", clusters), clusters, source, embedded, "choose fewer clusters")
    # Centred over the embeddings, which are not used again: a copy would be a second (N, D) held to the end.
    vectors = centred(embedded.vectors, embedded.vectors.mean(axis=0), in_place=True)
    centroids, assignment = kmeans(vectors, clusters, seed=seed, init="k-means++", restarts=3)
    # Renumbered by size, largest first: cluster 0 is what the collection holds most of.
    sizes = np.bincount(assignment, minlength=clusters)
    by_size = np.argsort(-sizes, kind="stable")
    number = np.empty(clusters, dtype=np.int64)
    number[by_size] = np.arange(clusters)
    assignment, centroids = number[assignment], centroids[by_size]
    similarity = cosine_to_centre(vectors, centroids, assignment)

    order = np.lexsort((-similarity, assignment))  # by cluster, then nearest the centre first
    csv_path = out / "clusters.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "cluster", "cosine_to_centre"])
        writer.writerows([embedded.names[i], int(assignment[i]), f"{similarity[i]:.4f}"] for i in order)

    sizes = sizes[by_size]
    if (sizes == 0).any():
        warn(f"k-means left {plural(int((sizes == 0).sum()), 'cluster')} empty: the images hold fewer distinct "
             f"groups than {option('clusters', clusters)}; choose fewer")
    starts = np.searchsorted(assignment[order], np.arange(clusters))  # where each cluster begins in `order`
    rows = []
    for c in range(min(clusters, CLUSTERS_DRAWN)):
        members = order[starts[c]:starts[c] + min(shown, sizes[c])]
        rows.append([(source, embedded.names[i], f"cluster {c} ({sizes[c]:,})" if n == 0 else
                      f"cos {similarity[i]:.2f}") for n, i in enumerate(members)])
    drawn = f", the {CLUSTERS_DRAWN} largest" if clusters > CLUSTERS_DRAWN else ""
    picture = draw_rows(rows, out / "clusters.png", f"clusters{drawn}: the images nearest each centre",
                        bands=embedded.bands)

    summary = {"images": len(embedded.names), "skipped": len(embedded.skipped), "clusters": clusters,
               "sizes": sizes.tolist(), "mean_cosine_to_centre": float(similarity.mean()),
               "outputs": {"csv": str(csv_path), "png": str(picture), "summary": str(out / "summary.json")}}
    classes = folder_classes(embedded.names)  # images laid out in class folders: how the clusters match them
    if classes is not None:
        summary["folders"] = {"classes": len(set(classes)), **cluster_agreement(assignment, np.array(classes))}
    write_summary(out, summary)
    agreement = (f"; against the {summary['folders']['classes']} class folders: purity "
                 f"{summary['folders']['purity']:.3f}, NMI {summary['folders']['nmi']:.3f}" if classes else "")
    say(f"cluster: {plural(len(embedded.names), 'image')} in {clusters} clusters of "
        f"{sizes.min():,} to {sizes.max():,}{agreement}")
    return summary


@one_command()
def search_images(query, gallery, checkpoint, out, k: int = 8, device: str = "auto", backbone: str | None = None,
                  image_size: int | None = None, small_stem: bool | None = None, show_progress: bool = True,
                  bands=None) -> dict:
    """For each image under `query` (an image, a folder or a tar), the `k` most similar images
    under `gallery`; a query image that is itself in the gallery is not its own neighbour.
    Writes OUT/neighbours.csv, OUT/neighbours.png and OUT/summary.json and returns the summary.
    `bands`: as cluster_images'."""
    if k < 1:
        raise UserError(f"{option('k')} must be at least 1, got {k}")
    with removed_if_left_empty(out):
        # Each file's (device, inode) kept from the stat that lists it: _same_files needs them.
        identified = functools.partial(open_file_or_source, identify=True)
        sources = {"query": open_option(query, "query", identified),
                   "gallery": open_option(gallery, "gallery", identified)}
        refuse_out_inside(out, sources["query"], query)
        refuse_out_inside(out, sources["gallery"], gallery)
        out = output_folder(out)
        embedded = embed_sources(checkpoint, sources, out, device, backbone, image_size, small_stem, show_progress,
                                 bands)
    queries, found = embedded["query"], embedded["gallery"]
    same_files = _same_files(sources["query"], queries.names, sources["gallery"], found.names)
    most_excluded = max(map(len, same_files.values()), default=0)
    others = len(found.names) - most_excluded  # what the query with the most copies in the gallery can find
    if others < 1:
        raise UserError("the gallery holds no image besides the query; give a gallery of other images")
    used = min(k, others)
    # Plain cosine of the encoder's L2-normalised features (as `selfsup embed` and `eval retrieval`):
    # the same pair of images scores the same whatever else the gallery holds. Enough are asked
    # for that `used` remain once a query's own rows (every link to its file) are dropped.
    sims, idx, _ = nearest(queries.vectors, found.vectors, min(len(found.names), used + most_excluded))
    results = [[(float(s), int(i)) for s, i in zip(row_sims, row_idx) if int(i) not in same_files.get(q, ())][:used]
               for q, (row_sims, row_idx) in enumerate(zip(sims, idx))]
    by_name = sorted(range(len(results)), key=queries.names.__getitem__)  # a tar lists in archive order

    csv_path = out / "neighbours.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "file", "cosine"])
        for q in by_name:
            writer.writerows([queries.names[q], rank, found.names[i], f"{s:.4f}"] for rank, (s, i) in
                             enumerate(results[q], start=1))
    rows = [[(sources["query"], queries.names[q], "query")] +
            [(sources["gallery"], found.names[i], f"cos {s:.2f}") for s, i in results[q]]
            for q in by_name[:QUERIES_DRAWN]]
    drawn = f", the first {QUERIES_DRAWN}" if len(results) > QUERIES_DRAWN else ""
    picture = draw_rows(rows, out / "neighbours.png", f"queries{drawn} and their most similar gallery images",
                        bands=found.bands, first_marked=True)
    asked = f" ({option('k', k)} asked)" if used < k else ""
    say(f"search: {plural(len(results), 'query', 'queries')}, {plural(used, 'neighbour')} each{asked} among "
        f"{plural(len(found.names), 'gallery image')}")
    summary = {"queries": len(results), "gallery": len(found.names), "k": used, "k_asked": k,
               "skipped": {"query": len(queries.skipped), "gallery": len(found.skipped)},
               "outputs": {"csv": str(csv_path), "png": str(picture), "summary": str(out / "summary.json")}}
    write_summary(out, summary)
    return summary


def _same_files(query: ImageSource, query_names: list[str], gallery: ImageSource,
                gallery_names: list[str]) -> dict[int, set[int]]:
    """{query row: gallery rows} for query images that are gallery images: the same file on disk
    (by device and inode: links and other spellings of its path too), or the same member of the
    same tar. A gallery may hold one file under several names (a.jpg and a link to it): all are
    the query's own rows."""
    rows_of: dict[tuple, set[int]] = {}
    for i, identity in enumerate(_identities(gallery, gallery_names)):
        rows_of.setdefault(identity, set()).add(i)
    same = {q: rows_of.get(identity) for q, identity in enumerate(_identities(query, query_names))}
    return {q: rows for q, rows in same.items() if rows}


def _identities(source: ImageSource, names: list[str]) -> list[tuple]:
    """What tells each of `names` apart as a file: its (device, inode), or its tar and the member it
    reads (a link member: the member it links to). The tar's path is resolved once, not per member:
    each resolve is an lstat of each folder on the way."""
    if is_tar_path(source.path):
        archive = source.path.resolve()
        return [("tar", archive, source.archive_name(name)) for name in names]
    return [("file", *source.file_id(name)) for name in names]
