"""A small synthetic news world (coloured shapes in places) to run the whole pipeline on a CPU in minutes."""
