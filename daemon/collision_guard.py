"""igrtd's use of the collision model (issue 17; docs/collision.md): which room it checks
a couch move in, and when.

* At a proposal (`plan`): the whole path from the couch pose at imaging to the
  target, at the gantry angle and arm state the room PLC reports now, with the
  supervision's path tolerance and the imaging tolerance as slack (the couch may
  start that far from its pose at imaging and stray that far from its path). A
  path below `collision.margin_mm` is refused naming the two objects, the
  clearance and the margin; otherwise the proposal carries the clearance found.
* At the MotionGate, before TARGET (`gate_reasons`): the proposal's proof stands
  when the gantry and the arms are as they were at the proposal (the gate has
  already checked that the couch is still within the imaging tolerance of its
  pose at imaging). Otherwise the path is proven again from the couch's pose now,
  with a bounded search (`GATE_SAMPLES`): a move not proven in time is refused,
  never allowed. A jog is checked the same way, from the couch's pose to where
  the jog would end.
* During motion (`hard_stop_reason`): the clearance at each reported couch pose,
  with the gantry angle as the PLC reports it then, against
  `collision.hard_margin_mm`: a gantry turned during a move stops the couch.

The gantry angle comes from the room PLC (register 9). One the PLC does not vouch
for (link down, stale, out of range) is no angle: every couch move is refused.
A room without a PLC (a bench rig) takes `collision.gantry_deg_without_plc`.
The PLC reports the kV source and kV panel arms; unless it vouches for both as
parked and still, both count as extended. The EPID has no PLC input: `collision.epid_extended`
says where it is during couch moves (a site that leaves it out sets it true).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.jsontypes import JsonObject
from drivers.plc import PlcSnapshot
from safety.collision import (
    MAX_SLACK_DEG,
    MAX_SLACK_MM,
    Clearance,
    PathCheck,
    RoomState,
    check_path,
    clearance,
)
from safety.collision_config import CollisionConfig, PatientEnvelope
from safety.collision_model import Arms, ArmState
from safety.collision_scene import CollisionModel
from safety.couch_model import CouchModel
from safety.pose import Pose

# Steps (probes and cell bounds, safety.collision_path) the proposal's path check may
# take (it runs before anyone confirms; 1,000 steps are under 0.1 s).
PLAN_SAMPLES = 1000
# Steps the gate may take when the room changed since the proposal (it is on the way
# to a GO; typical moves need 1 to 4): a path not proven within them is refused.
GATE_SAMPLES = 100
# A gantry angle within this of the proposal's is the same gantry (0.01 deg: the
# register's resolution).
SAME_GANTRY_DEG = 0.011


@dataclass(frozen=True, slots=True)
class CollisionView:
    """The room the collision model was asked about, and what it found."""

    gantry_deg: float
    arms: Arms
    check: PathCheck

    def view(self) -> JsonObject:
        c = self.check
        return {"allowed": c.allowed, "min_clearance_mm": round(c.min_clearance_mm, 1),
                "proven_mm": round(c.lower_bound_mm, 1), "objects": list(c.objects),
                "margin_mm": c.margin_mm, "gantry_deg": self.gantry_deg,
                "arms": {"kv_source": str(self.arms.kv_source),
                         "kv_panel": str(self.arms.kv_panel), "epid": str(self.arms.epid)},
                "reason": c.reason}


class CollisionGuard:
    def __init__(self, cfg: CollisionConfig, couch_model: CouchModel, *, path_tolerance_mm: float,
                 path_tolerance_deg: float, imaging_tolerance_mm: float,
                 imaging_tolerance_deg: float, has_plc: bool) -> None:
        self.cfg = cfg
        self.model = CollisionModel.for_couch(cfg.room, couch_model)
        self.has_plc = has_plc
        # At most what check_path accepts (the configured tolerances are far below it).
        self._slack_mm = min(MAX_SLACK_MM, path_tolerance_mm + imaging_tolerance_mm)
        self._slack_deg = min(MAX_SLACK_DEG, path_tolerance_deg + imaging_tolerance_deg)

    # ------------------------------------------------------------ the room now
    def room(self, snap: PlcSnapshot | None, arms_parked: bool) -> tuple[float | None, Arms]:
        """(gantry angle or None when unknown, arm state) from a PLC snapshot and the PLC
        verdict on the kV arms (both vouched parked and still, or both counted extended)."""
        epid = ArmState.EXTENDED if self.cfg.epid_extended else ArmState.PARKED
        kv = ArmState.PARKED if arms_parked else ArmState.EXTENDED
        if not self.has_plc:
            return self.cfg.gantry_deg_without_plc, Arms(kv, kv, epid)
        if snap is None or not snap.link_ok:
            return None, Arms(ArmState.EXTENDED, ArmState.EXTENDED, epid)
        return snap.gantry_deg, Arms(kv, kv, epid)

    def patient(self, envelope: PatientEnvelope | None) -> PatientEnvelope:
        return envelope if envelope is not None else self.cfg.patient

    # ------------------------------------------------------------ checks
    def plan(self, start: Pose, target: Pose, snap: PlcSnapshot | None, arms_parked: bool,
             envelope: PatientEnvelope | None) -> CollisionView | str:
        """The proposal's check (module doc): the view, or why no path can be checked."""
        gantry, arms = self.room(snap, arms_parked)
        if gantry is None:
            return _unknown_gantry(snap)
        check = check_path(start, target, gantry, arms, self.patient(envelope),
                           self.cfg.margin_mm, slack_mm=self._slack_mm,
                           slack_deg=self._slack_deg, model=self.model,
                           max_samples=PLAN_SAMPLES)
        return CollisionView(gantry, arms, check)

    def gate_reasons(self, planned: CollisionView | None, current: Pose | None, target: Pose,
                     snap: PlcSnapshot | None, arms_parked: bool,
                     envelope: PatientEnvelope | None) -> list[str]:
        """Why the move may not start as far as the collision model knows; [] if it may."""
        gantry, arms = self.room(snap, arms_parked)
        if gantry is None:
            return [_unknown_gantry(snap)]
        if current is None:
            return []  # the motion rule refuses an unknown couch pose itself
        if (planned is not None and planned.check.allowed and planned.arms == arms
                and abs(planned.gantry_deg - gantry) <= SAME_GANTRY_DEG):
            return []
        check = check_path(current, target, gantry, arms, self.patient(envelope),
                           self.cfg.margin_mm, slack_mm=self._slack_mm,
                           slack_deg=self._slack_deg, model=self.model,
                           max_samples=GATE_SAMPLES)
        return [] if check.allowed else [f"collision: {check.reason}"]

    def hard_stop_reason(self, pose: Pose, snap: PlcSnapshot | None, arms_parked: bool,
                         envelope: PatientEnvelope | None) -> str | None:
        """During motion: why the couch must stop now, or None."""
        gantry, arms = self.room(snap, arms_parked)
        if gantry is None:
            return _unknown_gantry(snap)
        found = self.clearance(pose, gantry, arms, envelope)
        if found.distance_mm < self.cfg.hard_margin_mm:
            return (f"collision: {found.objects[0]} and {found.objects[1]}: clearance "
                    f"{found.distance_mm:.1f} mm below the {self.cfg.hard_margin_mm:g} mm hard "
                    f"margin at gantry {gantry:.1f} deg")
        return None

    def brief(self, pose: Pose | None, snap: PlcSnapshot | None, arms_parked: bool,
              envelope: PatientEnvelope | None) -> JsonObject:
        """The status line: the gantry, the arms and the clearance at the couch's pose."""
        gantry, arms = self.room(snap, arms_parked)
        out: JsonObject = {"gantry_deg": gantry, "kv_arms": str(arms.kv_source),
                           "epid": str(arms.epid), "margin_mm": self.cfg.margin_mm,
                           "hard_margin_mm": self.cfg.hard_margin_mm}
        if gantry is None or pose is None:
            return {**out, "clearance_mm": None, "objects": None}
        try:
            found = self.clearance(pose, gantry, arms, envelope)
        except ValueError:  # a pose no couch reaches: no clearance to show
            return {**out, "clearance_mm": None, "objects": None}
        return {**out, "clearance_mm": round(found.distance_mm, 1),
                "objects": list(found.objects)}

    def clearance(self, pose: Pose, gantry: float, arms: Arms,
                  envelope: PatientEnvelope | None) -> Clearance:
        return clearance(RoomState(pose, gantry, arms, self.patient(envelope)), self.model)


def _unknown_gantry(snap: PlcSnapshot | None) -> str:
    why = ("no PLC reading" if snap is None else f"room PLC: {snap.link_reason}"
           if not snap.link_ok else "the room PLC does not vouch for it: heartbeat stale or "
           "register 9 outside 0..35999 (0.01 deg)")
    return f"collision: gantry angle unknown ({why}): no couch move without a collision check"


__all__ = ["GATE_SAMPLES", "PLAN_SAMPLES", "CollisionGuard", "CollisionView"]
