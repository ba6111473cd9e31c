"""The relay: the last step of the data path.  An SMTP/LMTP session and transport, the
sendmail binary, and the per-recipient results (sent, temporary, permanent) the queue
and the mailer record.  It sends what it is given and keeps no state of its own."""
