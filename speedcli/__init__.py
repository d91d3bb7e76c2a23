"""`speed`: the command-line client of SPEED's REST API, standard library only."""
