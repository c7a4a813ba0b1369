"""Asking a vision-language model for answers: the backend interface, the local backend, the answering loop and
the answer cache. Server backends live with labelling (mmkd.labelling), the only step that uses them."""
