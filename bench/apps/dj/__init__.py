"""A minimal Django project for Channels 4.3, written the way the Channels tutorial does.

Run from ``bench/`` with ``DJANGO_SETTINGS_MODULE=apps.dj.settings``::

    daphne -b 127.0.0.1 -p 8000 apps.dj.asgi:application
    uvicorn apps.dj.asgi:application

``DJ_LAYER=memory`` (default) or ``DJ_LAYER=redis`` picks ``CHANNEL_LAYERS``.
"""
