"""One arm interface for simulated and real arms (installed as robot_pref.hardware).

    from robot_pref.hardware import open_robot
    with open_robot("sim:lift") as robot:          # or "remote:HOST:PORT", "ur:IP", "franka:IP", "fake"
        obs = robot.reset(seed=0)
        applied = robot.send(robot.info.to_si(action))   # SI ee_delta after safety; datasets store it

Names load lazily, so importing the package (as the CLI does) pulls in neither MuJoCo nor ZeroMQ.
"""

from robot_pref.lazy import lazy_exports

_EXPORTS = {
    "Robot": "robot_pref.hardware.interface",
    "RobotInfo": "robot_pref.hardware.interface",
    "Observation": "robot_pref.hardware.interface",
    "SafetyFault": "robot_pref.hardware.interface",
    "SafetyConfig": "robot_pref.hardware.config",
    "SafeRobot": "robot_pref.hardware.safety",
    "SafetyFilter": "robot_pref.hardware.safety",
    "RobotServer": "robot_pref.hardware.server",
    "RemoteRobot": "robot_pref.hardware.remote",
    "SimRobot": "robot_pref.hardware.sim",
    "FakeArm": "robot_pref.hardware.fake",
    "open_robot": "robot_pref.hardware.record",
    "EpisodeRecorder": "robot_pref.hardware.record",
    "run_episode": "robot_pref.hardware.rollout",
    "rollout": "robot_pref.hardware.rollout",
    "teleop": "robot_pref.hardware.teleop",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
