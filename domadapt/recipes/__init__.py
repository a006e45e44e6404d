"""Built-in recipes: each module defines ``recipe(...)`` returning strategies composed
from the public ones, and runs from the command line (``domadapt run NAME``).

``domadapt recipes`` lists them. They ship inside the package, so they work from any
install; a ``recipes/NAME.py`` in the working directory takes precedence over a
built-in of the same name.
"""
