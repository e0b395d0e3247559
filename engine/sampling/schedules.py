"""The SDXL noise schedule and the sigma lists ("schedulers") built on it.

Everything here follows Fooocus 2.5.5 (reference §2.2-2.3): a discrete, eps-predicting model trained
on 1000 timesteps with "scaled linear" betas. A :class:`NoiseSchedule` maps between sigmas and UNet
timesteps, scales the UNet's input and turns its output into a denoised estimate;
:class:`EdmNoiseSchedule` is the continuous EDM variant Playground v2.5 was trained with.
:func:`build_sigmas` makes the ``steps + 1`` sigmas a sampler walks through (the last one is
always 0).
"""

from __future__ import annotations

import math

import torch

from engine.options import PLAYGROUND_SCHEDULER, check_scheduler
from engine.types import EngineInputError

TRAINING_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
KARRAS_RHO = 7.0
# Distilled (LCM/TCD) models only learned every 20th timestep of the 1000: t = 19, 39, ..., 999.
DISTILLED_STEPS = 50
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0
# Fooocus's EDM model sampling for Playground v2.5 (ComfyUI's ModelSamplingContinuousEDM with
# sampling "edm_playground_v2.5", sigma_max 120, sigma_min 0.002).
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 120.0
EDM_SIGMA_DATA = 0.5
# NVIDIA's "Align Your Steps" noise levels for SDXL: the published table to 10 digits, as Fooocus
# uses them.
AYS_SDXL_SIGMAS: tuple[float, ...] = (
    14.6146412293,
    6.3184485287,
    3.7681790315,
    2.1811480769,
    1.3405244945,
    0.8620721141,
    0.5550693289,
    0.3798540708,
    0.2332364134,
    0.1114188177,
    0.0291671582,
)


def training_sigmas() -> torch.Tensor:
    """The 1000 training sigmas of SDXL, ascending (index = timestep), float32.

    Betas are linear in sqrt(beta) from 0.00085 to 0.012; sigma(t) = sqrt((1 - abar_t) / abar_t).
    Computed in float64 and stored in float32, as the reference implementation does.
    """
    return _training_sigmas64().float()


def _training_sigmas64() -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAINING_STEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5


def _f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _log_f32(values: torch.Tensor) -> torch.Tensor:
    """log of each value, correctly rounded to float32: computed in float64, then rounded.

    torch's own float32 log may differ by one ulp between CPU instruction sets; rounding the
    float64 result keeps the tables and the nearest-timestep rule identical on every machine.
    """
    return values.double().log().float()


def nearest_index(log_sigmas: torch.Tensor, sigma: float) -> int:
    """The one rule for sigma -> nearest table entry, used for every sigma -> timestep mapping.

    As Fooocus (``ModelSamplingDiscrete.timestep``): sigma is taken as float32, its log rounded to
    float32, and the distances |log sigma - log_sigmas[i]| are float32 differences (exact IEEE
    operations, so the same everywhere). An exact tie (a sigma at a log-midpoint of two entries)
    goes to the LOWER index, the first minimum (``argmin``'s documented choice in Fooocus).
    """
    log_sigma = _log_f32(torch.tensor([_f32(sigma)], dtype=torch.float64))
    distances = (log_sigma - log_sigmas.float()).abs()
    best = distances.min()
    return int(torch.nonzero(distances == best)[0, 0])


class NoiseSchedule:
    """Sigma <-> timestep mapping and the eps -> denoised rule of one kind of model.

    ``distilled`` keeps only the 50 timesteps LCM/TCD models were distilled on (the UNet timestep
    is snapped to that grid); ``lcm_output`` adds LCM's boundary-condition output
    (denoised = c_out * x0 + c_skip * x, sigma_data 0.5, timestep scaling 10).
    """

    def __init__(self, *, distilled: bool = False, lcm_output: bool = False) -> None:
        full = _training_sigmas64()
        self.distilled = distilled
        self.lcm_output = lcm_output
        self.stride = TRAINING_STEPS // DISTILLED_STEPS if distilled else 1
        # Valid sigma k sits at training timestep k * stride + (stride - 1): 19, 39, ... 999.
        # Fooocus's log table: log of the float64 sigmas for the full model, log of the float32
        # ones for the distilled grid; both rounded to float32.
        if distilled:
            self.sigmas = full[self.stride - 1 :: self.stride].float()
            self.log_sigmas = _log_f32(self.sigmas)
        else:
            self.sigmas = full.float()
            self.log_sigmas = _log_f32(full)

    @property
    def sigma_min(self) -> float:
        """The smallest sigma the model knows."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest sigma the model knows (pure noise)."""
        return float(self.sigmas[-1])

    def timestep(self, sigma: float) -> float:
        """The UNet's timestep for ``sigma``: the integer training timestep whose sigma is nearest
        in log space, by :func:`nearest_index` (float32, exact ties to the lower timestep).
        Fooocus also measures progress (1 - t/999) and the ADM switch with it."""
        index = nearest_index(self.log_sigmas, sigma)
        return index * self.stride + (self.stride - 1)

    def sigma(self, timestep: float) -> float:
        """Sigma at a (possibly fractional) timestep, interpolated linearly in log sigma.

        In float32, step by step as Fooocus's ``ModelSamplingDiscrete(Distilled).sigma`` does;
        the float32 exp is the float64 one rounded.
        """
        f32 = torch.float32
        t = torch.tensor(timestep, dtype=f32)
        if self.stride != 1:
            t = (t - (self.stride - 1)) / self.stride
        t = t.clamp(0.0, len(self.sigmas) - 1.0)
        low, high = int(t.floor()), int(t.ceil())
        w = t - t.floor()
        table = self.log_sigmas
        log_sigma = (1.0 - w) * table[low] + w * table[high]
        return _f32(math.exp(float(log_sigma)))

    def input_scale(self, sigma: float) -> float:
        """The factor c_in the UNet's input is scaled by: 1/sqrt(sigma² + 1) (unit-variance x_t)."""
        return 1.0 / math.sqrt(sigma**2 + 1.0)

    def denoised(self, x: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
        """The model's x0 estimate from its eps prediction at ``sigma``."""
        x0 = x - sigma * eps
        if not self.lcm_output:
            return x0
        scaled_t = self.timestep(sigma) * LCM_TIMESTEP_SCALING
        c_skip = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_out * x0 + c_skip * x


class EdmNoiseSchedule(NoiseSchedule):
    """EDM model sampling (Karras et al. 2022) as Playground v2.5 uses it: continuous sigma.

    The UNet sees c_in·x with c_in = 1/sqrt(σ² + σd²) at timestep c_noise = 0.25·ln σ, and its
    output F is an eps-type prediction (diffusers' ``prediction_type="epsilon"``; ComfyUI's
    ``EDM``): denoised = c_skip·x + c_out·F with c_skip = σd²/(σ² + σd²) and
    c_out = σ·σd/sqrt(σ² + σd²). ``sigmas`` is a 1000-point log-uniform grid over
    [sigma_min, sigma_max], as in ComfyUI, for the rules that read a table.
    """

    def __init__(
        self,
        *,
        sigma_min: float = EDM_SIGMA_MIN,
        sigma_max: float = EDM_SIGMA_MAX,
        sigma_data: float = EDM_SIGMA_DATA,
    ) -> None:
        super().__init__()
        self._sigma_min = sigma_min
        self._sigma_max = sigma_max
        self.sigma_data = sigma_data
        grid = torch.linspace(math.log(sigma_min), math.log(sigma_max), TRAINING_STEPS)
        self.sigmas = grid.exp()
        self.log_sigmas = grid

    @property
    def sigma_min(self) -> float:
        """The smallest sigma of the model sampling (0.002)."""
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        """The largest sigma of the model sampling (120, as Fooocus sets it)."""
        return self._sigma_max

    def timestep(self, sigma: float) -> float:
        """c_noise = 0.25·ln σ, the UNet's (continuous) timestep.

        Fooocus feeds the same value to its progress (1 - t/999) and ADM switch
        (t > 999·(1 - adm_scaler_end)), so on EDM progress stays ~1 and the ADM switch never
        picks the emphasized size ids; :class:`~engine.guidance.FooocusDenoiser` does the same.
        """
        return 0.25 * math.log(sigma)

    def sigma(self, timestep: float) -> float:
        """The inverse of :meth:`timestep`: exp(4·t)."""
        return math.exp(4.0 * timestep)

    def input_scale(self, sigma: float) -> float:
        """c_in = 1/sqrt(σ² + σd²)."""
        return 1.0 / math.sqrt(sigma**2 + self.sigma_data**2)

    def denoised(self, x: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
        """c_skip·x + c_out·F for the UNet output F at ``sigma``."""
        total = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = sigma * self.sigma_data / math.sqrt(total)
        return c_skip * x + c_out * eps


def schedule_for(scheduler_name: str) -> tuple[NoiseSchedule, str]:
    """The noise schedule a scheduler name implies, and the sigma-list rule to use with it.

    Fooocus turns the ``lcm`` and ``tcd`` schedulers into ``sgm_uniform`` on a distilled model
    sampling (LCM output for ``lcm``, plain eps for ``tcd``) and ``edm_playground_v2.5`` into
    ``karras`` on EDM model sampling; every other name keeps the plain one.
    """
    check_scheduler(scheduler_name)
    if scheduler_name == PLAYGROUND_SCHEDULER:
        return EdmNoiseSchedule(), "karras"
    if scheduler_name == "lcm":
        return NoiseSchedule(distilled=True, lcm_output=True), "sgm_uniform"
    if scheduler_name == "tcd":
        return NoiseSchedule(distilled=True), "sgm_uniform"
    return NoiseSchedule(), scheduler_name


def build_sigmas(scheduler_name: str, steps: int, schedule: NoiseSchedule) -> torch.Tensor:
    """The sigmas (float32, descending, last one 0) the sampler walks for ``steps`` steps.

    ``scheduler_name`` is the rule returned by :func:`schedule_for` (``lcm``/``tcd`` already
    mapped to ``sgm_uniform``, ``edm_playground_v2.5`` to ``karras``). Usually ``steps + 1``
    values; ``ddim_uniform`` can give one more when 1000 is not a multiple of ``steps``, as in
    Fooocus.
    """
    check_scheduler(scheduler_name, steps)
    if steps < 1:
        raise EngineInputError("steps", "at least one sampling step is needed")
    rule = "sgm_uniform" if scheduler_name in ("lcm", "tcd") else scheduler_name
    if scheduler_name == PLAYGROUND_SCHEDULER:
        rule = "karras"
    values = _SCHEDULERS[rule](steps, schedule)
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def _uniform_in_time(steps: int, schedule: NoiseSchedule, *, sgm: bool) -> list[float]:
    start = schedule.timestep(schedule.sigma_max)
    end = schedule.timestep(schedule.sigma_min)
    # sgm_uniform spaces N + 1 points and drops the last, so it never lands on t_min itself.
    count = steps + 1 if sgm else steps
    times = torch.linspace(start, end, count, dtype=torch.float32).tolist()
    if sgm:
        times = times[:-1]
    return [schedule.sigma(t) for t in times]


def _normal(steps: int, schedule: NoiseSchedule) -> list[float]:
    return _uniform_in_time(steps, schedule, sgm=False)


def _sgm_uniform(steps: int, schedule: NoiseSchedule) -> list[float]:
    return _uniform_in_time(steps, schedule, sgm=True)


def _karras(steps: int, schedule: NoiseSchedule) -> list[float]:
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    inv_max = schedule.sigma_max ** (1.0 / KARRAS_RHO)
    inv_min = schedule.sigma_min ** (1.0 / KARRAS_RHO)
    return ((inv_max + ramp * (inv_min - inv_max)) ** KARRAS_RHO).tolist()


def _exponential(steps: int, schedule: NoiseSchedule) -> list[float]:
    logs = torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps)
    return logs.double().exp().tolist()


def _simple(steps: int, schedule: NoiseSchedule) -> list[float]:
    stride = len(schedule.sigmas) / steps
    return [float(schedule.sigmas[-(1 + int(k * stride))]) for k in range(steps)]


def _ddim_uniform(steps: int, schedule: NoiseSchedule) -> list[float]:
    stride = len(schedule.sigmas) // steps
    indices = range(1, len(schedule.sigmas), stride)
    return [float(schedule.sigmas[i]) for i in reversed(indices)]


def _turbo(steps: int, schedule: NoiseSchedule) -> list[float]:
    # SD-Turbo's timesteps 999, 899, ..., 99, the first `steps` of them.
    return [schedule.sigma(999 - 100 * k) for k in range(steps)]


def _align_your_steps(steps: int, schedule: NoiseSchedule) -> list[float]:
    # Resample the published levels to steps + 1 points, linearly in log sigma over an even grid;
    # the last point is replaced by the final 0 that build_sigmas appends.
    levels = list(AYS_SDXL_SIGMAS)
    if steps + 1 == len(levels):
        return levels[:-1]
    logs = [math.log(v) for v in reversed(levels)]  # ascending
    span = len(logs) - 1
    out = []
    for k in range(steps + 1):
        pos = k / steps * span
        low = min(int(pos), span - 1)
        frac = pos - low
        out.append(math.exp((1 - frac) * logs[low] + frac * logs[low + 1]))
    return list(reversed(out))[:-1]


_SCHEDULERS = {
    "normal": _normal,
    "karras": _karras,
    "exponential": _exponential,
    "sgm_uniform": _sgm_uniform,
    "simple": _simple,
    "ddim_uniform": _ddim_uniform,
    "turbo": _turbo,
    "align_your_steps": _align_your_steps,
}
