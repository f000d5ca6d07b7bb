"""Drawing synthetic chest radiographs: the patient's anatomy and acquisition (nuisance)
and the findings, as X-ray attenuation in patient coordinates, then a film tone curve."""

import numpy as np

# (the patient's right) -1 to +1, y from the top -1 to +1.
_LOBE_CENTRES = np.array(
    [
        [-0.45, -0.38],
        [-0.30, 0.12],
        [-0.48, 0.28],
        [0.42, -0.38],
        [0.45, 0.08],
        [0.50, 0.30],
    ],
    np.float32,
)
_FINDING_KEYS = (
    "atelectasis",
    "cardiomegaly",
    "edema",
    "fracture",
    "effusion",
    "pneumonia",
    "pneumothorax",
)


# --------------------------------------------------------------------------------------
# Nuisance: patient, projection, exposure
# --------------------------------------------------------------------------------------


def _sample_anatomy(findings, seed, difficulty):
    """Per-image geometry and acquisition parameters (dict of float32 arrays (n,))."""
    labels = findings["labels"]
    n = len(labels)
    rng = np.random.default_rng([int(seed), 0xA2])
    d = float(difficulty)

    def uniform(low, high, spread=1.0):
        mid = (low + high) / 2
        half = (high - low) / 2 * spread
        return rng.uniform(mid - half, mid + half, n).astype(np.float32)

    ap_view = rng.random(n) < 0.35
    low = findings["low_volumes"]
    a = {
        "ap_view": ap_view,
        "female": rng.random(n) < 0.5,
        "leads": np.where(ap_view, rng.random(n) < 0.7, rng.random(n) < 0.12),
        "gastric_bubble": rng.random(n) < 0.6,
        "marker": rng.random(n) < 0.6,
        "marker_corner": rng.integers(0, 4, n),
        "rotation": uniform(-0.09, 0.09, d),  # radians
        "shift_x": uniform(-0.08, 0.08, d),
        "shift_y": uniform(-0.08, 0.06, d),
        "scale": uniform(0.86, 1.1, d),
        "thorax": uniform(0.68, 0.88, d),  # half width of the rib cage
        "apex": uniform(-0.78, -0.68),
        "dome": np.where(low, uniform(0.22, 0.32), uniform(0.32, 0.48)),
        "dome_left": uniform(0.02, 0.07),  # the left dome sits lower
        "soft_tissue": uniform(0.8, 1.25, d),  # habitus: thickness of the body wall
        "lung_air": uniform(0.58, 0.8, d),
        "bone": uniform(0.75, 1.25),
        "rib_tilt": uniform(0.75, 1.05),
        "rib_start": uniform(-0.86, -0.78),
        "rib_spacing": uniform(0.105, 0.125),
        "vessel_phase": rng.uniform(0, 2 * np.pi, (n, 6)).astype(np.float32),
        "vessels": uniform(0.7, 1.3),
        "exposure": uniform(1.0, 1.8, d),  # attenuation -> brightness gain
        "gamma": uniform(0.75, 1.3, d),
        "window_low": uniform(0.0, 0.15, d),
        "window_high": uniform(0.9, 1.02),
        "noise": uniform(0.012, 0.045, d),
        "heel": uniform(0.0, 0.08, d),
        "heel_angle": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        "scatter": uniform(0.0, 0.05, d),
        "mottle": uniform(0.005, 0.025, d),
        "blur": uniform(0.35, 1.0),  # pixels at 128 px
        "aortic_knob": uniform(0.03, 0.07),
        "heart_tilt": uniform(0.4, 0.75),  # radians of the long axis
        "heart_height": uniform(0.23, 0.33),
        "heart_offset": uniform(-0.05, 0.05, d),
        # The drawn silhouette differs from the labelled CTR as a measurement would.
        "heart_measure": rng.normal(0.0, 0.02 * d, n).astype(np.float32),
        "arm": np.where(rng.random(n) < 0.6, uniform(0.3, 0.6), 0).astype(np.float32),
        "arm_gap": uniform(0.02, 0.12),
        "electrodes": rng.uniform(-0.7, 0.7, (n, 5, 2)).astype(np.float32),
        "electrode_count": rng.integers(3, 6, n),
        "focal_x": rng.normal(0, 0.05, n).astype(np.float32),
        "focal_y": rng.normal(0, 0.05, n).astype(np.float32),
        "consolidation_extent": uniform(0.13, 0.2),
        "atelectasis_angle": uniform(-0.25, 0.15),
        "atelectasis_height": uniform(0.2, 0.34),
        "pleural_line": uniform(0.7, 1.2),
    }
    # AP projection magnifies the heart and brings the scapulae over the lungs; a poor
    # inspiration (high domes) makes the heart look broader. Both mimic cardiomegaly,
    # as they do on real films.
    magnification = np.where(ap_view, uniform(1.04, 1.12), 1.0)
    magnification *= 1 + 0.5 * np.clip(0.4 - a["dome"], 0, None)
    a["heart_magnification"] = magnification.astype(np.float32)
    return a


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _ramp(t):
    return np.clip(t, 0.0, 1.0)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _interpolation_matrix(size, cells):
    """(size, cells) matrix that linearly interpolates a coarse grid of ``cells`` values
    to ``size`` samples: a smooth random field is M @ noise @ M.T."""
    positions = np.linspace(0, cells - 1, size)
    low = np.floor(positions).astype(int).clip(0, cells - 2)
    frac = positions - low
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


def _smooth_noise(rng, count, size, cells):
    matrix = _interpolation_matrix(size, cells)
    coarse = rng.standard_normal((count, cells, cells), dtype=np.float32)
    return matrix @ coarse @ matrix.T


def _gaussian_blur(images, sigmas):
    """Blur each (size, size) image with its own Gaussian sigma (pixels), separably,
    as two batched matrix products."""
    size = images.shape[-1]
    offsets = np.arange(size, dtype=np.float32)
    diff = offsets[None, :, None] - offsets[None, None, :]
    exponent = (
        0.5 * (diff / np.maximum(sigmas, 1e-3).astype(np.float32)[:, None, None]) ** 2
    )
    # Zero the far tails: tiny weights would be denormal floats, which make the matrix
    # products below some hundred times slower.
    kernels = np.where(exponent < 30, np.exp(-np.minimum(exponent, 30)), 0)
    kernels /= kernels.sum(axis=2, keepdims=True)
    return kernels @ images @ np.ascontiguousarray(kernels.transpose(0, 2, 1))


def _render_chunk(f, a, size, rng, difficulty):
    """Images (count, size, size) uint8 for one chunk of findings ``f`` and anatomy
    ``a`` (dicts of arrays over the chunk's images).

    Everything is drawn as X-ray attenuation in patient coordinates (x from the image's
    left, the patient's right, -1 to +1; y from the top), summed, then passed through a
    film-like tone curve. Structures present in only some images (findings, leads,
    breast shadows) are computed for those images only."""
    count = len(f["labels"])
    # Finding textures draw from their own generator, so that adding a finding to an
    # image leaves its noise unchanged.
    finding_rng = np.random.default_rng(rng.integers(2**63))
    px = 2.0 / size  # patient units per pixel
    e = max(px, 0.012)  # width of soft-tissue edges
    amp = 1.0 / max(float(difficulty), 0.25)  # conspicuity of the findings
    present = {name: f["labels"][:, k] > 0 for k, name in enumerate(_FINDING_KEYS)}

    # Mediastinal shift: towards a collapse (atelectasis), away from a large pneumothorax.
    shift = np.zeros(count, np.float32)
    one_sided = (
        present["atelectasis"]
        & (f["atelectasis_side"] < 2)
        & (f["atelectasis_severity"] >= 2)
    )
    shift += np.where(one_sided, np.where(f["atelectasis_side"] == 0, -0.02, 0.02), 0)
    tension = present["pneumothorax"] & (f["pneumothorax_size"] == 3)
    shift += np.where(tension, np.where(f["pneumothorax_side"] == 0, 0.035, -0.035), 0)

    # Per side (right, left): fluid height, pneumothorax depth, atelectasis strength.
    def by_side(finding, side_key, values):
        on = present[finding][:, None] & (
            (f[side_key][:, None] == [0, 1]) | (f[side_key][:, None] == 2)
        )
        return np.where(on, np.asarray(values, np.float32)[:, None], 0).astype(np.float32)

    fluid = by_side(
        "effusion", "effusion_side", np.array([0.08, 0.2, 0.38])[f["effusion_size"] - 1]
    )
    ptx = by_side(
        "pneumothorax",
        "pneumothorax_side",
        np.array([0.09, 0.16, 0.28])[f["pneumothorax_size"] - 1],
    )
    collapse = by_side(
        "atelectasis", "atelectasis_side", 0.25 + 0.25 * f["atelectasis_severity"]
    )
    dome_right = a["dome"] - 0.07 * collapse[:, 0]
    dome_left = a["dome"] + a["dome_left"] - 0.07 * collapse[:, 1]

    # ---- coordinates ------------------------------------------------------------------
    grid = np.linspace(-1 + px / 2, 1 - px / 2, size, dtype=np.float32)
    u, v = grid[None, None, :], grid[None, :, None]

    def per(values, idx=None):  # per-image values broadcast over pixels
        values = np.asarray(values, np.float32)
        return (values if idx is None else values[idx])[:, None, None]

    cos, sin, scale = (
        per(np.cos(a["rotation"])),
        per(np.sin(a["rotation"])),
        per(a["scale"]),
    )
    du, dv = u - per(a["shift_x"]), v - per(a["shift_y"])
    x = (cos * du + sin * dv) / scale
    y = (-sin * du + cos * dv) / scale
    left = x > 0  # the patient's left is the image's right
    lat = np.abs(x)  # distance from the midline (the spine)
    mid = per(shift)  # the mediastinum's shift: moves heart, trachea and medial borders

    def sided(right_values, left_values, idx=None):
        where = left if idx is None else left[idx]
        return np.where(where, per(left_values, idx), per(right_values, idx))

    thorax = per(a["thorax"])
    apex = per(a["apex"])
    dome = sided(dome_right, dome_left)
    hilum = sided(np.full(count, -0.03), np.full(count, -0.09))

    # ---- body, shoulders, arms --------------------------------------------------------
    body_half = (
        thorax
        + 0.1
        + 0.22 * np.exp(-(((y + 0.8) / 0.18) ** 2))
        + 0.06 * np.clip(y, 0, None)
    )
    # Neck and sloping shoulders: above the shoulder line there is air.
    shoulder_line = -1.02 + 0.32 * np.clip(lat - 0.16, 0, None)
    body = _ramp((body_half - lat) / (3 * e)) * np.maximum(
        _ramp((y - shoulder_line) / (3 * e)), _ramp((0.17 - lat) / (3 * e))
    )
    across = np.sqrt(np.clip(1 - (lat / (body_half + 0.05)) ** 2, 0, 1))
    attenuation = body * (0.55 + 0.45 * across) * per(a["soft_tissue"])
    # Arms beside the chest, separated from it by a strip of air.
    arm = _ramp((lat - body_half - per(a["arm_gap"])) / (3 * e)) * _smoothstep(
        (y + 0.75) / 0.2
    )
    attenuation += (
        per(a["arm"])
        * arm
        * (0.6 - 0.2 * _smoothstep((lat - body_half - per(a["arm_gap"])) / 0.3))
    )
    top = slice(0, (size * 2) // 5)  # rows holding the shoulders and clavicles
    humerus = np.sqrt((lat[:, top] - thorax - 0.27) ** 2 + (y[:, top] + 0.78) ** 2)
    attenuation[:, top] += 0.35 * per(a["bone"]) * _ramp((0.14 - humerus) / e)

    # ---- heart: a tilted ellipse sitting on the left dome, width set by the CTR -------
    ctr = (f["ctr"] + a["heart_measure"]) * a["heart_magnification"]
    heart_width = ctr * 2 * a["thorax"]
    tilt = a["heart_tilt"]
    ry = a["heart_height"] * (1 + 0.6 * (ctr - 0.45))
    # A tilted ellipse's half width is sqrt(rx^2 cos^2 + ry^2 sin^2): solve for rx.
    rx = np.sqrt(
        np.clip(
            ((heart_width / 2) ** 2 - (ry * np.sin(tilt)) ** 2) / np.cos(tilt) ** 2,
            1e-3,
            None,
        )
    )
    # The heart sits on the diaphragm: its lowest point a little below the left dome,
    # so it grows up and out as it enlarges, and its widest point (the left ventricle's
    # border, which the CTR measures) stays above the dome.
    reach_down = np.sqrt((rx * np.sin(tilt)) ** 2 + (ry * np.cos(tilt)) ** 2)
    cx = per(shift + 0.14 * heart_width + a["heart_offset"])
    cy = per(dome_left + 0.1 - reach_down)
    ct, st = per(np.cos(tilt)), per(np.sin(tilt))
    along = (ct * (x - cx) + st * (y - cy)) / per(rx)
    across = (-st * (x - cx) + ct * (y - cy)) / per(ry)
    rho2 = along * along + across * across
    # The right atrium: the lower right heart border, a rounder bulge sitting on the
    # right dome whose outer edge is the silhouette's right extent.
    atrium_r = 0.17 * heart_width
    atrium_x = per(shift + a["heart_offset"] - 0.36 * heart_width + atrium_r)
    atrium_y = per(dome_right + 0.02 - 0.9 * atrium_r)
    atrium2 = ((x - atrium_x) / per(atrium_r)) ** 2 + (
        (y - atrium_y) / per(1.5 * atrium_r)
    ) ** 2
    rho2 = np.minimum(rho2, atrium2)
    heart = _ramp((1 - rho2) * per(np.minimum(rx, ry)) / (2 * e) + 0.5)
    heart_depth = np.sqrt(np.clip(1 - rho2, 0, 1))

    # ---- lungs ------------------------------------------------------------------------
    t = np.clip((y - apex) / (dome + 0.1 - apex), 0, 1)  # 0 at the apex, 1 at the base
    wall = thorax * (0.1 + 0.9 * np.sqrt(t * (2 - t)))
    knob = sided(np.zeros(count), a["aortic_knob"]) * np.exp(-(((y + 0.22) / 0.07) ** 2))
    medial = 0.05 + 0.05 * _smoothstep((hilum - y) / 0.1) + knob + np.where(left, mid, -mid)
    apex_curve = apex + 0.6 * (lat - 0.36) ** 2
    diaphragm = (
        dome
        + 0.55 * np.clip(lat - 0.3, 0, None) ** 2
        + 0.9 * np.clip(0.3 - lat, 0, None) ** 2
    )
    distance = np.minimum(
        np.minimum(wall - lat, lat - medial), np.minimum(y - apex_curve, diaphragm - y)
    )
    lung = _ramp(distance / e + 0.5)
    lung_depth = np.sqrt(np.clip(distance / 0.2, 0, 1))
    # The heart displaces lung: only a thin layer of retrocardiac lung stays in front
    # of and behind it.
    aerated = lung * (0.2 + 0.8 * lung_depth) * (1 - heart * (0.6 + 0.25 * heart_depth))
    attenuation -= aerated * per(a["lung_air"])
    below = _ramp((y - diaphragm) / e + 0.5) * _ramp((wall + 0.04 - lat) / e)
    attenuation += 0.18 * below * body  # upper abdomen: soft tissue, no air
    attenuation += 0.06 * heart * heart_depth * _smoothstep((diaphragm - y) / 0.08)

    # Vascular markings fanning out of the hila and thinning towards the periphery:
    # Gaussian ridges along rays, bent by a smooth random field. Edema blurs them.
    hx, hy = lat - 0.2, y - hilum
    radius = np.sqrt(hx * hx + hy * hy) + 1e-3
    angle = np.arctan2(hy, hx)
    bend = _smooth_noise(rng, count, size, 9)
    edema = np.where(present["edema"], f["edema_severity"], 0).astype(np.float32)
    width = per(1 + 0.5 * edema) * (0.008 + 0.02 * np.exp(-radius / 0.12))
    # A second field switches ridges on and off along their length, so that they read
    # as separate, branching vessels rather than rays.
    gate = _smooth_noise(rng, count, size, 12)
    vessels = np.zeros_like(x)
    for k, rays in enumerate((7, 11, 17)):
        phase = 0.5 * rays * angle + (0.8 + 0.3 * k) * bend + per(a["vessel_phase"][:, k])
        off = phase - np.pi * np.rint(phase / np.pi)  # distance to the nearest ridge
        vessels += np.exp(-0.5 * (off * radius * (2.0 / rays) / width) ** 2) * _ramp(
            0.7 + (1.5 - 1.5 * k) * gate
        )
    vessels *= np.exp(-radius / 0.4) * lung * per(a["vessels"])
    hilar = np.exp(-((hx / 0.07) ** 2 + (hy / 0.12) ** 2)) * lung
    attenuation += 0.14 * vessels + 0.14 * hilar

    carina = hilum - 0.08
    upper = slice(0, (size * 3) // 5)  # rows above the carina
    trachea = np.exp(-((((x[:, upper] - mid + 0.01) / 0.032) ** 2) ** 2)) * _smoothstep(
        (carina[:, upper] - y[:, upper]) / 0.04
    )
    attenuation[:, upper] -= 0.22 * trachea * body[:, upper]
    spine = _smoothstep((0.075 - lat) / e)
    vertebra = 0.5 + 0.5 * np.cos(2 * np.pi * (y - per(a["rib_start"])) / 0.095)
    pedicles = np.exp(-(((lat - 0.045) / 0.012) ** 2)) * vertebra * vertebra * vertebra
    attenuation += per(a["bone"]) * (
        0.2 * spine * (0.75 + 0.25 * vertebra) + 0.08 * pedicles
    )

    # ---- ribs, clavicles, scapulae ----------------------------------------------------
    cage = (
        _smoothstep((wall + 0.05 - lat) / e)
        * _smoothstep((lat - 0.06) / e)
        * (1 - 0.6 * below)
    )
    ribs = _posterior_ribs(lat, y, left, per, None, a, f, px, amp, fractured=False)
    broken = np.flatnonzero(present["fracture"])
    if broken.size:
        ribs[broken], lesion = _posterior_ribs(
            lat[broken], y[broken], left[broken], per, broken, a, f, px, amp, fractured=True
        )
        attenuation[broken] += lesion * body[broken]
    attenuation += 0.17 * per(a["bone"]) * ribs * cage
    # Anterior ribs: fainter, running down and inwards from the chest wall.
    front = y + 0.45 * (lat - thorax)
    fraction = (front - per(a["rib_start"])) / (per(a["rib_spacing"]) * 1.35)
    fraction -= np.floor(fraction)
    anterior = np.clip(
        np.minimum(fraction, 0.3 - fraction) * per(a["rib_spacing"]) * 1.35 / px + 0.5, 0, 1
    )
    attenuation += (
        0.035
        * per(a["bone"])
        * anterior
        * cage
        * _smoothstep((lat - 0.35) / 0.1)
        * (y < dome)
    )

    # Clavicles: from beside the spine out and up to the shoulders, over the apices.
    lat_top, y_top = lat[:, top], y[:, top]
    clavicle_y = apex + 0.1 - 0.2 * lat_top + 0.04 * np.sin(np.pi * lat_top / 0.8)
    off = np.abs(y_top - clavicle_y)
    clavicle = (
        _ramp((0.032 - off) / px + 0.5)
        * _ramp((lat_top - 0.07) / e)
        * _ramp((thorax + 0.12 - lat_top) / e)
    )
    attenuation[:, top] += 0.22 * per(a["bone"]) * clavicle * (0.75 + 0.25 * off / 0.032)

    def add(mask, draw):
        """attenuation[idx] += draw(idx) for the images where mask is true."""
        idx = np.flatnonzero(mask)
        if idx.size:
            attenuation[idx] += draw(idx)

    # Scapulae over the lateral upper lungs (AP views: arms not rotated forward).
    add(
        a["ap_view"],
        lambda i: (
            0.08
            * body[i]
            * _smoothstep((lat[i] - (wall[i] - 0.18 + 0.25 * (y[i] - apex[i]))) / 0.02)
            * _smoothstep((0.05 - y[i]) / 0.1)
            * _smoothstep((y[i] - apex[i] + 0.05) / 0.05)
        ),
    )
    # Gastric bubble under the left dome.
    lower = slice((size * 2) // 5, size)  # rows below the hila

    def gastric_bubble(i):
        drawn = np.zeros((len(i), size, size), np.float32)
        drawn[:, lower] = (
            -0.18
            * left[i, lower]
            * _smoothstep(
                (
                    1
                    - ((lat[i, lower] - 0.3) / 0.11) ** 2
                    - ((y[i, lower] - per(dome_left, i) - 0.1) / 0.06) ** 2
                )
                / 0.2
            )
        )
        return drawn

    add(a["gastric_bubble"], gastric_bubble)
    # Breast shadows over the lower lateral lungs.
    add(
        a["female"],
        lambda i: (
            0.13
            * body[i]
            * _smoothstep(
                (1 - ((lat[i] - 0.5) / 0.38) ** 2 - ((y[i] - dome[i] - 0.12) / 0.33) ** 2)
                / 0.15
            )
        ),
    )

    # ---- findings -----------------------------------------------------------------------
    def effusion(i):
        # Dependent fluid with a meniscus climbing the lateral wall: blunts the
        # costophrenic angle and hides the dome.
        height = sided(fluid[:, 0], fluid[:, 1], i)
        reach = lat[i] / thorax[i]
        top = dome[i] + 0.17 - height - 0.25 * reach * reach * reach
        level = _smoothstep((y[i] - top) / 0.05) * (height > 0)
        return amp * 0.45 * level * lung[i] * (0.7 + 0.3 * _smoothstep((y[i] - top) / 0.2))

    def pneumothorax(i):
        # Air beyond the visceral pleural line (deeper at the apex, as the lung falls
        # away from the apex first): a lucent rim with no vessel markings, a few pixels
        # wide at 64 px for a small one; the thin white pleural line; the collapsing
        # lung denser inside it.
        depth = sided(ptx[:, 0], ptx[:, 1], i)
        inner = wall[i] - depth * (0.7 + 1.0 * (1 - t[i]))
        top = apex_curve[i] + 1.2 * depth
        outside = (
            np.maximum(_ramp((lat[i] - inner) / px + 0.5), _ramp((top - y[i]) / px + 0.5))
            * lung[i]
            * (depth > 0)
        )
        to_line = np.minimum(
            np.abs(lat[i] - inner) + np.clip(top - y[i], 0, None),
            np.abs(y[i] - top) + np.clip(lat[i] - inner, 0, None),
        )
        line = (
            np.exp(-((to_line / (0.7 * px)) ** 2))
            * lung[i]
            * (depth > 0)
            * (1 - _smoothstep((y[i] - dome[i] + 0.05) / 0.1))
        )
        collapsed = (1 - outside) * lung[i] * _ramp(depth / 0.15)
        return (
            amp
            * (-0.24 * outside + 0.22 * per(a["pleural_line"], i) * line + 0.08 * collapsed)
            - 0.14 * vessels[i] * outside
        )

    def pneumonia(i):
        # Focal consolidation of one lobe: the air spaces fill, so the opacity is dense
        # (most of the lung's lucency is lost) with darker air bronchograms inside; an
        # upper lobe ends sharply at the minor fissure, the middle lobe begins there and
        # hugs the right heart border.
        lobe = f["pneumonia_lobe"][i]
        severity = f["pneumonia_severity"][i].astype(np.float32)
        extent = a["consolidation_extent"][i] * (0.8 + 0.35 * severity)
        cxp = (_LOBE_CENTRES[lobe, 0] + a["focal_x"][i]) * a["thorax"][i] / 0.78
        cyp = _LOBE_CENTRES[lobe, 1] + a["focal_y"][i]
        cyp = cyp + (a["dome"][i] - 0.4) * (cyp > 0)
        blob = ((x[i] - per(cxp)) / per(extent * 1.2)) ** 2 + (
            (y[i] - per(cyp)) / per(extent)
        ) ** 2
        patches = _smooth_noise(finding_rng, len(i), size, 16)
        consolidation = _smoothstep((1.0 - blob + 0.35 * patches) / 0.5) * lung[i]
        fissure = per(np.full(len(i), -0.05))  # the minor fissure, right lung only
        upper = per(np.isin(lobe, (0,)))
        middle = per(np.isin(lobe, (1,)))
        consolidation *= 1 - upper * _ramp((y[i] - fissure) / px + 0.5)
        consolidation *= 1 - middle * _ramp((fissure - y[i]) / px + 0.5)
        bronchi = vessels[i] / np.maximum(per(a["vessels"], i), 0.1)
        # Fluid replacing air: a share of the lung's own lucency, plus water density.
        filled = per(0.35 + 0.15 * severity) * aerated[i] * per(a["lung_air"], i)
        return amp * consolidation * (filled + 0.06) * (1 - 0.4 * bronchi)

    def edema_draw(i):
        # Bilateral perihilar haze (bat wing) fading to the periphery, and interstitial
        # (Kerley B) lines: short horizontal lines at the lateral lung bases, spaced
        # widely enough (2-3 px at 64 px) to stay lines at the demo's view size.
        level = per(edema, i)
        haze = np.exp(-((hx[i] / 0.3) ** 2 + (hy[i] / 0.4) ** 2)) * lung[i]
        zone = (
            lung[i]
            * _smoothstep((lat[i] - wall[i] + 0.16) / 0.04)
            * _smoothstep((y[i] - dome[i] + 0.4) / 0.08)
        )
        period = 0.075
        kerley = np.exp(-0.5 * ((y[i] / period - np.rint(y[i] / period)) / 0.15) ** 2)
        return amp * ((0.03 + 0.04 * level) * haze + 0.04 * (0.5 + level) * kerley * zone)

    def atelectasis(i):
        # Plate-like (discoid) atelectasis: a dense horizontal band in the lower zone,
        # clear of the dome, 2-3 px thick at 64 px (a sub-pixel line was lost in the
        # view and left only the raised dome, which normal inspiration also varies);
        # the volume loss (raised dome, shift) is in the geometry above.
        strength = sided(collapse[:, 0], collapse[:, 1], i)
        plate_y = (
            dome[i]
            - per(a["atelectasis_height"], i)
            + per(a["atelectasis_angle"], i) * (lat[i] - 0.45)
        )
        plate = np.exp(-(((y[i] - plate_y) / 0.04) ** 2)) * _smoothstep(
            (0.2 - np.abs(lat[i] - 0.45)) / 0.08
        )
        base = _smoothstep((y[i] - dome[i] + 0.12) / 0.1)
        return amp * lung[i] * ((0.2 + 0.25 * strength) * plate + 0.05 * strength * base)

    def leads(i):
        drawn = np.zeros_like(x[i])
        for k in range(5):
            on = per(a["electrode_count"][i] > k, None)
            ex, ey = per(a["electrodes"][i, k, 0]), per(a["electrodes"][i, k, 1])
            ring = np.sqrt((x[i] - ex) ** 2 + (y[i] - ey) ** 2)
            wire = np.abs(x[i] - ex - 0.15 * (y[i] - ey) ** 2)
            drawn += on * (
                np.exp(-(((ring - 0.025) / 0.006) ** 2))
                + 0.8 * (ring < 0.008)
                + 0.5 * np.exp(-((wire / 0.004) ** 2)) * (y[i] > ey)
            )
        return 0.35 * np.clip(drawn, 0, 1.2)

    add(present["effusion"], effusion)
    add(present["pneumothorax"], pneumothorax)
    add(present["pneumonia"], pneumonia)
    add(present["edema"], edema_draw)
    add(present["atelectasis"], atelectasis)
    add(a["leads"], leads)

    # ---- detector: tone curve, exposure, blur, noise, marker ----------------------------
    image = 1 - np.exp(-per(a["exposure"]) * np.clip(attenuation, 0, None))
    low, high = per(a["window_low"]), per(a["window_high"])
    image = np.clip((image - low) / (high - low), 0, 1) ** per(a["gamma"])
    image += per(a["mottle"]) * _smooth_noise(rng, count, size, 24) * body
    # Uneven exposure: the anode heel effect (a gradient) and scatter (a broad field).
    image += per(a["heel"]) * (
        per(np.cos(a["heel_angle"])) * u + per(np.sin(a["heel_angle"])) * v
    )
    image += per(a["scatter"]) * _smooth_noise(rng, count, size, 4)
    image = _gaussian_blur(image, a["blur"] * size / 128)
    image += per(a["noise"]) * rng.standard_normal(image.shape, dtype=np.float32)
    # A position marker (a bright tab with a dark letter) in one corner.
    for k in np.flatnonzero(a["marker"]):
        side = max(size // 20, 3)
        row = min(
            int(size * (0.05 if a["marker_corner"][k] < 2 else 0.88)), size - side - 2
        )
        col = min(
            int(size * (0.07 if a["marker_corner"][k] % 2 == 0 else 0.86)), size - side
        )
        image[k, row : row + side + 2, col : col + side] = 0.97
        image[k, row + 1 : row + side + 1, col + side // 3] = 0.35
        image[k, row + side, col + side // 3 : col + side - 1] = 0.35
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _posterior_ribs(lat, y, left, per, idx, a, f, px, amp, fractured):
    """Posterior ribs (count, size, size) in [0, 1] for the images idx (None: the whole
    chunk): arches that rise a little from the spine and fall towards the chest wall,
    with brighter cortical margins. Rib k's arch passes the spine at
    start + spacing * (k + 0.05 k^2); the rib index of a pixel is that relation
    inverted in closed form.

    With fractured=True, returns (ribs, lesion): the rib lateral to the break is
    stepped (by about a rib's width when displaced) and its cortex interrupted, and
    lesion (count, size, size), attenuation to add, is what makes a fracture visible
    at a small view: the haematoma beside an acute fracture (a soft-tissue blob a few
    pixels across at 64 px, larger when displaced) or the callus of a healing one (a
    bony fusiform swelling of the rib)."""
    spacing, start = per(a["rib_spacing"], idx), per(a["rib_start"], idx)
    bow = lat - 0.3
    level = y - per(a["rib_tilt"], idx) * np.where(bow > 0, 1.3, 0.6) * bow * bow
    grow = 0.05
    root = np.sqrt(np.clip(1 + 4 * grow * (level - start) / spacing, 0, None))
    index = (root - 1) / (2 * grow)
    if fractured:
        on_side = left == per(f["fracture_side"][idx] == 1).astype(bool)
        rib = per(f["fracture_rib"][idx] - 1)
        at = per(0.15 + 0.6 * f["fracture_position"][idx]) * per(a["thorax"], idx)
        near = on_side & (index > rib - 0.27) & (index < rib + 0.72)
        displaced = per(f["fracture_displaced"][idx])
        healing = per(f["fracture_healing"][idx])
        # Distance from the break along and across the rib (patient units).
        along = lat - at
        across = (index - rib - 0.2) * spacing * root
        step = (0.2 + 0.35 * displaced) * min(amp, 1.5)
        index = np.where(near & (lat > at), index - step, index)
    fraction = index - np.floor(index)
    thickness = 0.42
    # Signed distance to the nearest rib edge (positive inside), in index units, then
    # in patient units (d level / d index = root * spacing).
    edge = np.maximum(thickness / 2 - np.abs(fraction - thickness / 2), fraction - 1)
    ribs = _ramp(edge * root * (spacing / px) + 0.5)
    profile = _ramp(fraction * (1 / thickness))
    ribs *= 1 - 1.6 * profile * (1 - profile)  # cortical margins brighter than the middle
    ribs *= (index > -0.3) & (index < 10.5)
    if not fractured:
        return ribs
    gap = np.exp(-((along / max(1.4 * px, 0.03)) ** 2)) * near
    ribs *= 1 - 0.9 * min(amp, 1.0) * gap
    # Haematoma (acute): a soft-tissue blob centred on the break, 6-8 px across at
    # 64 px, dense enough to stand out from the ribs and vessels it overlies.
    radius = 0.11 + 0.04 * displaced
    haematoma = np.exp(-(along**2 + across**2) / radius**2)
    # Callus (healing): bony, fusiform along the rib.
    callus = np.exp(-((along / 0.12) ** 2 + (across / 0.07) ** 2))
    lesion = (
        amp
        * on_side
        * ((1 - healing) * 0.55 * haematoma + healing * 0.6 * per(a["bone"], idx) * callus)
    )
    return ribs, lesion
