"""DashFusion: dual-stream alignment with hierarchical bottleneck fusion
(``student.dashfusion``)."""

from students.methods.dashfusion.method import DashFusion

__all__ = ["DashFusion"]
