"""A plugin written for pyramid_mailer, as notification plugins are: it includes
pyramid_mailer itself and sends through ``pyramid_mailer.get_mailer(request)``.
Left exactly as such a plugin is: the app that includes it cannot change it."""
from pyramid_mailer import get_mailer
from pyramid_mailer.message import Message


def notify(request):
    get_mailer(request).send(Message(subject="plugin notice", recipients=["ops@example.com"],
                                     body="something happened"))
    return request.response


def includeme(config):
    config.include("pyramid_mailer")
    config.add_route("plugin_notify", "/plugin/notify")
    config.add_view(notify, route_name="plugin_notify")
