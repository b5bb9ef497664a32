"""Energy per request (groundwork of the energy issue: the meters, the
attribution that conserves a window's energy, and carbon; the engine's
per-step accounting and the daemon wiring come next).

    meters.py       cumulative energy counters: RAPL (powercap sysfs, with
                    wraparound), NVML (counter, or integrated power), and an
                    estimate from CPU time and a configured wattage.  Every
                    reading carries its source; an estimate is never passed
                    off as a measurement.
    attribution.py  splits one window's measured energy among the requests
                    that ran in it: the dynamic part by token work (prefill
                    and decode weighted apart), the idle part by each
                    request's share of the time; what no request covers is
                    idle energy.  The parts add up to the window's total.
    weights.py      the prefill/decode weights and idle power, fitted by a
                    regression over windows
    carbon.py       gCO2e from energy and an operator-given grid intensity
                    (a constant or a time-of-day table; never looked up)
"""
