"""The commands: one module per verb of the ``medclf`` command line, each with the Python
function it offers (``train``, ``evaluate_run``, ``predict_files``, ...) and ``main(args)``
for the command line. Commands orchestrate the stage libraries and are the only layer that
holds the whole configuration; nothing below imports them."""
