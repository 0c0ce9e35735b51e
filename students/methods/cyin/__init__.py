"""CyIN: a cyclic informative latent space for complete and incomplete inputs
(``student.cyin``)."""

from students.methods.cyin.method import Cyin

__all__ = ["Cyin"]
