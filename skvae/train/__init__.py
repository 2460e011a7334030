"""Training: the minibatch loop (:mod:`~skvae.train.loop`) and the row sources that feed it (:mod:`~skvae.train.rows`)."""
