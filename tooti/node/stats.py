"""Live load and speed figures a node reports in its heartbeats."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class NodeStats:
    """Counters owned by the inference service, read by the heartbeat loop.

    ``ttft_ms_ema`` and ``decode_tps_ema`` are exponential moving averages (alpha 0.2) over
    requests that produced output; 0 means "no measurement yet".
    """

    capacity: int
    in_flight: int = 0
    served: int = 0
    failed: int = 0
    refused_busy: int = 0
    bad_frames: int = 0
    ttft_ms_ema: float = 0.0
    decode_tps_ema: float = 0.0

    _ALPHA = 0.2

    def observe(self, ttft_ms: float | None, tokens: int, decode_s: float) -> None:
        if ttft_ms is not None:
            self.ttft_ms_ema = (
                ttft_ms
                if not self.ttft_ms_ema
                else (self._ALPHA * ttft_ms + (1 - self._ALPHA) * self.ttft_ms_ema)
            )
        if tokens > 1 and decode_s > 0:
            tps = (tokens - 1) / decode_s
            self.decode_tps_ema = (
                tps
                if not self.decode_tps_ema
                else (self._ALPHA * tps + (1 - self._ALPHA) * self.decode_tps_ema)
            )
