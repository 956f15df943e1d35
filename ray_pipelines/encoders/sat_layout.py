"""Names in the encode job's stable-audio-tools layout that its writer (``sat_sink``), the reader
(``readers.encode``) and ``preview`` share. Imports nothing: the reader loads it in training
processes, which should not import the engine (and Ray) with it."""

FILELIST = "filelist.txt"  # every sample's .npy path, one a line, in the order of the ids
