"""Composing a message: the first step of the data path.  What a view hands over
(an ``EmailMessage``, a :class:`~pyramid_txmail.compose.builder.Mail`, a pyramid_mailer
``Message``, a template) is validated here and turned into an envelope and wire bytes;
``mail.redirect_to`` rewrites the envelope.  Nothing here knows how the mail is sent."""
