"""`skinaug inspect`: look at a dataset before training a generator on it (report.html, report.json, plots).

Per image, one decode at a reduced size: its file size, pixel size, mode and format; per-channel RGB histograms;
mean HSV saturation and mean CIELAB lightness L* (outliers beyond `z` standard deviations, listed with
thumbnails); a SHA-256 of the file (exact duplicates) and a 64-bit perceptual (DCT) hash (near duplicates: Hamming
distance <= `near`, confirmed by thumbnails that differ by at most NEAR_PIXELS on average). With a model, the images its VQ-VAE reconstructs worst. The HTML embeds its plots, so it
opens in a browser with no network; the same PNGs sit beside it.

    skinaug inspect DATA [--labels CSV] [--model MODEL] --out REPORT_DIR
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.scan import Sample, scan_dataset
from ..errors import BadImage, SkinaugError
from ..storage.fs import claim_output, marked_folder, write_json, write_text
from ..runtime import log, progress

REPORT_FOLDER = marked_folder("inspect report", "report.json")
STATS_SIDE = 128  # images are measured at this side (JPEGs decode at a fraction of their size)
THUMB = 64
NEAR_PIXELS = 8.0  # near duplicates: mean absolute difference of the 64px thumbnails at most this (0-255)


@dataclass
class ImageFacts:
    sample: Sample
    width: int
    height: int
    mode: str
    format: str
    file_bytes: int
    sha256: str
    phash: int
    saturation: float  # mean HSV saturation in [0, 1]
    lightness: float  # mean CIELAB L* in [0, 100]
    histogram: np.ndarray  # (3, 256) pixel counts per channel
    thumbnail: np.ndarray  # (THUMB, THUMB, 3) uint8


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of sRGB pixels (uint8 (..., 3)), D65 white: from the relative luminance Y."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126729, 0.7151522, 0.0721750])  # the Y row of the sRGB to XYZ matrix
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116.0 * f - 16.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of uint8 (..., 3) pixels; 0 for black."""
    high, low = rgb.max(axis=-1).astype(np.float64), rgb.min(axis=-1).astype(np.float64)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit pHash of a (32, 32) grayscale array: the signs, against their median, of the 8x8 lowest frequencies of
    its 2-D DCT (the constant term left out of the median). Steadier than a difference hash on the smooth,
    low-contrast skin around a small lesion, where pixel-to-pixel differences are mostly noise."""
    from scipy.fft import dctn

    low = dctn(np.asarray(gray, dtype=np.float64), norm="ortho")[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def measure(sample: Sample) -> ImageFacts:
    from PIL import Image

    from ..data.scan import MAX_IMAGE_PIXELS, PIL_FORMATS, _check_decoded_size

    data = Path(sample.path).read_bytes()
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            width, height, mode, kind = image.width, image.height, image.mode, image.format or "?"
            if width * height > MAX_IMAGE_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}")
            image.draft("RGB", (STATS_SIDE, STATS_SIDE))
            _check_decoded_size(image)  # after draft (JPEGs shrink without decoding), before any pixel is decoded
            rgb = image.convert("RGB")
            rgb.thumbnail((STATS_SIDE, STATS_SIDE))
            pixels = np.asarray(rgb)
            gray = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
            thumbnail = np.asarray(rgb.resize((THUMB, THUMB), Image.Resampling.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(str(error) or type(error).__name__) from None
    histogram = np.stack([np.bincount(pixels[..., c].reshape(-1), minlength=256) for c in range(3)])
    return ImageFacts(sample, width, height, mode, kind, len(data), hashlib.sha256(data).hexdigest(), perceptual_hash(gray),
                      float(saturation(pixels).mean()), float(lightness(pixels).mean()), histogram, thumbnail)


def near_duplicate_pairs(hashes: np.ndarray, near: int, chunk: int = 512) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j and Hamming distance <= near between the 64-bit hashes."""
    popcount = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk, None] ^ hashes[None, :]
        distance = popcount[block.view(np.uint8).reshape(*block.shape, 8)].sum(axis=-1)
        rows, cols = np.nonzero(distance <= near)
        pairs += [(start + int(i), int(j), int(distance[i, j])) for i, j in zip(rows, cols) if start + i < j]
    return pairs


def _groups_of_pairs(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    """Connected components of the duplicate pairs (union-find): each a set of copies of one image."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in sorted({k for pair in pairs for k in pair}):
        groups.setdefault(root(i), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


# ------------------------------------------------------------------------- drawing (PIL only: no plotting library)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]]) -> bytes:
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
    width, height, left, top, bottom = 120 + 70 * len(labels), 300, 60, 30, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    peak = max([max(values) for values in series.values() if values] + [1])
    plot_h = height - top - bottom
    bar = 60 / max(len(series), 1)
    for i, name in enumerate(labels):
        x0 = left + 10 + 70 * i
        for k, (key, values) in enumerate(series.items()):
            h = values[i] / peak * plot_h
            draw.rectangle([x0 + k * bar, top + plot_h - h, x0 + (k + 1) * bar - 2, top + plot_h], fill=colours[k % 3])
            draw.text((x0 + k * bar, top + plot_h - h - 12), f"{values[i]:g}", fill="black")
        draw.text((x0, top + plot_h + 6), name[:10], fill="black")
    for k, key in enumerate(series):
        draw.rectangle([left + 10 + 110 * k, height - 22, left + 20 + 110 * k, height - 12], fill=colours[k % 3])
        draw.text((left + 24 + 110 * k, height - 24), key, fill="black")
    draw.line([(left, top + plot_h), (width - 10, top + plot_h)], fill="black")
    return _png(image)


def line_chart(title: str, curves: dict[str, np.ndarray], x_label: str, colours: dict[str, tuple] | None = None) -> bytes:
    from PIL import Image, ImageDraw

    width, height, left, top, plot_w, plot_h = 560, 300, 50, 30, 480, 220
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    peak = max(float(np.max(values)) for values in curves.values()) or 1.0
    palette = [(200, 40, 40), (40, 150, 40), (40, 40, 200), (120, 120, 120)]
    for k, (name, values) in enumerate(curves.items()):
        colour = (colours or {}).get(name, palette[k % len(palette)])
        n = len(values)
        points = [(left + i / max(n - 1, 1) * plot_w, top + plot_h - float(v) / peak * plot_h) for i, v in enumerate(values)]
        draw.line(points, fill=colour, width=2)
        draw.text((left + plot_w - 90, top + 6 + 14 * k), name, fill=colour)
    draw.text((left + plot_w / 2 - 40, top + plot_h + 8), x_label, fill="black")
    return _png(image)


def contact_sheet(tiles: list[np.ndarray], captions: list[str], per_row: int = 8) -> bytes:
    """Tiles (each uint8 (h, w, 3), shown THUMB pixels high) in rows, a caption under each."""
    from PIL import Image, ImageDraw

    shown = [Image.fromarray(tile).resize((max(1, THUMB * tile.shape[1] // tile.shape[0]), THUMB)) for tile in tiles]
    cell_w, cell_h = max([im.width for im in shown] + [THUMB]) + 8, THUMB + 20
    rows = max(1, -(-len(shown) // per_row))
    sheet = Image.new("RGB", (per_row * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(shown, captions)):
        x, y = (i % per_row) * cell_w + 4, (i // per_row) * cell_h + 2
        sheet.paste(tile, (x, y))
        draw.text((x, y + THUMB + 2), caption[: cell_w // 6], fill="black")
    return _png(sheet)


# ------------------------------------------------------------------------- the report


def inspect_dataset(data, labels=None, *, out, model=None, near: int = 4, z: float = 3.0, show: int = 16, device="auto",
                    workers: int | None = None, overwrite: bool = False, **columns) -> dict:
    """Writes REPORT_DIR (report.html, report.json, plots/) and returns the report's summary."""
    if near < 0 or near > 64:
        raise SkinaugError(f"{{near}} must be a Hamming distance from 0 to 64, not {near}")
    claim = claim_output(out, kind=REPORT_FOLDER, inputs=(data, labels, model), overwrite=overwrite)
    with claim:
        dataset = scan_dataset(data, labels, **columns)
        facts, unreadable = [], []
        with ThreadPoolExecutor(max_workers=workers or 4) as pool, progress(len(dataset.samples), desc="inspect") as bar:
            for sample, result in zip(dataset.samples, pool.map(_measure_or_reason, dataset.samples)):
                (unreadable.append((sample.name, result)) if isinstance(result, str) else facts.append(result))
                bar.update(1)
        if not facts:
            raise SkinaugError(f"no image of {data} could be read")
        if unreadable:
            log(f"{len(unreadable)} unreadable images left out of the report (e.g. {unreadable[0][0]}: {unreadable[0][1]})")
        report, plots = _summarise(dataset, facts, unreadable, near=near, z=z, show=show)
        if model is not None:
            report["reconstruction"], plots["worst_reconstructions.png"] = _worst_reconstructions(model, facts, show, device)
        plot_dir = claim.work / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        for name, png in plots.items():
            (plot_dir / name).write_bytes(png)
        write_text(claim.work / "report.html", _html(report, plots))
        write_json(claim.work / "report.json", report)
    report["out"] = str(out)
    return report


def _measure_or_reason(sample: Sample):
    try:
        return measure(sample)
    except BadImage as error:
        return str(error)
    except OSError as error:
        return error.strerror or str(error)


def _summarise(dataset, facts: list[ImageFacts], unreadable, *, near: int, z: float, show: int) -> tuple[dict, dict]:
    names = dataset.class_names
    per_class = Counter(names[f.sample.label] if f.sample.label >= 0 else "(unlabelled)" for f in facts)
    lesions: dict[str, set] = {}
    for f in facts:
        lesions.setdefault(names[f.sample.label] if f.sample.label >= 0 else "(unlabelled)", set()).add(f.sample.group or f.sample.name)
    classes = sorted(per_class)
    histogram = sum(f.histogram for f in facts)
    sat = np.array([f.saturation for f in facts])
    light = np.array([f.lightness for f in facts])

    def outliers(values: np.ndarray, what: str) -> list[dict]:
        spread = values.std() or 1.0
        scores = (values - values.mean()) / spread
        order = np.argsort(-np.abs(scores), kind="stable")
        return [{"image": facts[i].sample.name, what: round(float(values[i]), 4), "z": round(float(scores[i]), 2)}
                for i in order if abs(scores[i]) > z]

    exact, near_groups, crossing = _duplicate_groups(facts, near)
    report = {
        "data": str(dataset.root), "images": len(facts), "unreadable": [{"image": n, "reason": r} for n, r in unreadable],
        "classes": {c: {"images": per_class[c], "lesions": len(lesions[c])} for c in classes},
        "sizes": {f"{w}x{h}": n for (w, h), n in Counter((f.width, f.height) for f in facts).most_common()},
        "modes": dict(Counter(f.mode for f in facts).most_common()),
        "formats": dict(Counter(f.format for f in facts).most_common()),
        "file_bytes": {"min": min(f.file_bytes for f in facts), "median": int(np.median([f.file_bytes for f in facts])),
                       "max": max(f.file_bytes for f in facts)},
        "rgb_mean": [round(float((histogram[c] * np.arange(256)).sum() / histogram[c].sum()), 2) for c in range(3)],
        "saturation": {"mean": round(float(sat.mean()), 4), "std": round(float(sat.std()), 4), "outliers": outliers(sat, "saturation")},
        "lightness": {"mean": round(float(light.mean()), 2), "std": round(float(light.std()), 2), "outliers": outliers(light, "lightness")},
        "duplicates": {
            "exact_groups": [[facts[i].sample.name for i in g] for g in exact],
            "exact_images": sum(len(g) - 1 for g in exact),  # copies beyond the first of each group
            "near_distance": near,
            "near_groups": [[facts[i].sample.name for i in g] for g in near_groups],
            "near_images": sum(len(g) - 1 for g in near_groups),
            "near_groups_across_lesions": len(crossing),  # copies under different lesion ids: they leak across splits
        },
        "z": z,
    }
    return report, _plots(report, facts, classes, per_class, lesions, histogram, sat, light, near_groups, show)


def _duplicate_groups(facts: list[ImageFacts], near: int) -> tuple[list, list, list]:
    """Groups of byte-identical images, groups of near-duplicates, and the near groups that cross lesion ids."""
    by_sha: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        by_sha.setdefault(f.sha256, []).append(i)
    exact = [members for members in by_sha.values() if len(members) > 1]
    # hash neighbours are candidates; a pair counts when the thumbnails also agree pixel for pixel (a small dark
    # lesion centred on plain skin shares its low frequencies with many others)
    pairs = [(i, j, d) for i, j, d in near_duplicate_pairs(np.array([f.phash for f in facts], dtype=np.uint64), near)
             if np.abs(facts[i].thumbnail.astype(np.int16) - facts[j].thumbnail).mean() <= NEAR_PIXELS]
    near_groups = _groups_of_pairs([(i, j) for i, j, _ in pairs], len(facts))
    crossing = [g for g in near_groups if len({facts[i].sample.group or facts[i].sample.name for i in g}) > 1]
    return exact, near_groups, crossing


def _plots(report, facts, classes, per_class, lesions, histogram, sat, light, near_groups, show) -> dict:
    """The report's pictures: classes, colour histograms, the outliers' and near-duplicates' contact sheets."""
    plots = {
        "classes.png": bar_chart("images and lesions per class", classes,
                                 {"images": [per_class[c] for c in classes], "lesions": [len(lesions[c]) for c in classes]}),
        "rgb_histogram.png": line_chart("RGB histogram (all images)", {"R": histogram[0], "G": histogram[1], "B": histogram[2]},
                                        "pixel value 0-255", {"R": (200, 40, 40), "G": (40, 150, 40), "B": (40, 40, 200)}),
        "saturation.png": line_chart("mean HSV saturation per image", {"images": np.histogram(sat, 50, (0, 1))[0]}, "saturation 0-1"),
        "lightness.png": line_chart("mean CIELAB L* per image", {"images": np.histogram(light, 50, (0, 100))[0]}, "L* 0-100"),
    }
    index = {f.sample.name: f for f in facts}
    for key, what in (("saturation", "saturation"), ("lightness", "lightness")):
        listed = report[key]["outliers"][:show]
        if listed:
            plots[f"{key}_outliers.png"] = contact_sheet([index[o["image"]].thumbnail for o in listed],
                                                         [f"{o[what]:.2f}" for o in listed])
    shown = [g for g in (near_groups or [])][: max(1, show // 2)]
    if shown:
        tiles = [facts[i].thumbnail for g in shown for i in g[:2]]
        plots["near_duplicates.png"] = contact_sheet(tiles, [facts[i].sample.name for g in shown for i in g[:2]])
    return plots


def _worst_reconstructions(model, facts: list[ImageFacts], show: int, device) -> tuple[dict, bytes]:
    """Per-image reconstruction MSE (images scaled to [0, 1]) under the model's VQ-VAE; the worst shown."""
    from ..data.scan import load_image
    from ..backends.torch import TorchCodeModel
    from ..storage.modeldir import ModelDir, resolve_model

    model_dir = ModelDir(resolve_model(model))
    code_model = TorchCodeModel(model_dir, device)
    size = code_model.spec.image_size
    errors = []
    for start in range(0, len(facts), 64):
        images = np.stack([load_image(f.sample.path, size) for f in facts[start : start + 64]])
        back = code_model.decode(code_model.encode(images))
        errors += list((((back.astype(np.float64) - images) / 255.0) ** 2).mean(axis=(1, 2, 3)))
    errors = np.array(errors)
    worst = np.argsort(-errors, kind="stable")[:show]
    tiles, captions = [], []
    for i in worst:
        original = load_image(facts[i].sample.path, size)
        tiles.append(np.concatenate([original, code_model.decode(code_model.encode(original[None]))[0]], axis=1))
        captions.append(f"{errors[i]:.4f}")
    summary = {"model": str(model_dir.path), "mse_mean": round(float(errors.mean()), 6),
               "worst": [{"image": facts[i].sample.name, "mse": round(float(errors[i]), 6)} for i in worst]}
    return summary, contact_sheet(tiles, captions, per_row=4)


def _html(report: dict, plots: dict[str, bytes]) -> str:
    def image(name: str, alt: str) -> str:
        if name not in plots:
            return ""
        data = base64.b64encode(plots[name]).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'

    def table(rows: dict, head: tuple[str, str]) -> str:
        body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
        return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>"

    dup = report["duplicates"]
    classes = {c: f"{v['images']:,} images, {v['lesions']:,} lesions" for c, v in report["classes"].items()}
    parts = [
        f"<h1>skinaug inspect: {html.escape(report['data'])}</h1>",
        f"<p>{report['images']:,} images read, {len(report['unreadable'])} unreadable.</p>",
        "<h2>Classes</h2>", table(classes, ("class", "count")), image("classes.png", "images and lesions per class"),
        "<h2>Files</h2>", table(report["sizes"], ("size", "images")), table(report["modes"], ("mode", "images")),
        table(report["formats"], ("format", "images")),
        "<h2>Colour</h2>", image("rgb_histogram.png", "RGB histogram"),
        image("saturation.png", "saturation"), image("saturation_outliers.png", f"saturation outliers (|z| > {report['z']})"),
        image("lightness.png", "lightness"), image("lightness_outliers.png", f"lightness outliers (|z| > {report['z']})"),
        "<h2>Duplicates</h2>",
        f"<p>{dup['exact_images']} exact copies in {len(dup['exact_groups'])} groups; {dup['near_images']} near copies "
        f"(perceptual hashes within {dup['near_distance']} bits) in {len(dup['near_groups'])} groups, "
        f"{dup['near_groups_across_lesions']} of them across lesion ids.</p>",
        image("near_duplicates.png", "near duplicates (pairs)"),
    ]
    if "reconstruction" in report:
        parts += ["<h2>Reconstruction</h2>",
                  f"<p>Mean MSE {report['reconstruction']['mse_mean']} under {html.escape(report['reconstruction']['model'])}.</p>",
                  image("worst_reconstructions.png", "worst reconstructions (original | reconstruction, MSE)")]
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>skinaug inspect</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
